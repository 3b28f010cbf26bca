{{/*
Names, labels and shared snippets. Every template names objects through these helpers, so the
ServiceAccounts, Roles, bindings and the operator's environment always agree, and two releases
(in different namespaces, or with different names) never share an object.
*/}}

{{/* Chart name, overridable. */}}
{{- define "civic-mcp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "civic-mcp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "civic-mcp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "civic-mcp.labels" -}}
helm.sh/chart: {{ include "civic-mcp.chart" . }}
{{ include "civic-mcp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: civic-mcp
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels every pod of the release carries, controller and webhook alike. */}}
{{- define "civic-mcp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "civic-mcp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one Deployment's pods (immutable once installed); argument: (list $ "controller"|"webhook"). */}}
{{- define "civic-mcp.componentSelectorLabels" -}}
{{ include "civic-mcp.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Cluster-scoped objects (ClusterRoles and their bindings, the webhook configuration) carry the
release namespace too: two releases of the same name in different namespaces must not collide.
*/}}
{{- define "civic-mcp.clusterScopedName" -}}
{{- printf "%s-%s" (include "civic-mcp.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "civic-mcp.serviceAccountName" -}}
{{- printf "%s-operator" (include "civic-mcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The webhook's ServiceAccount. */}}
{{- define "civic-mcp.webhookServiceAccountName" -}}
{{- printf "%s-webhook" (include "civic-mcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names shared between templates and the operator's environment. */}}
{{- define "civic-mcp.webhookServiceName" -}}
{{- printf "%s-webhook" (include "civic-mcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "civic-mcp.metricsServiceName" -}}
{{- printf "%s-metrics" (include "civic-mcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "civic-mcp.sidecarsPodMonitorName" -}}
{{- printf "%s-sidecars" (include "civic-mcp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Carries the release namespace: metrics.dashboard.namespace may gather several releases'. */}}
{{- define "civic-mcp.dashboardName" -}}
{{- printf "%s-dashboard" (include "civic-mcp.clusterScopedName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Cluster-scoped; rbac.yaml grants the webhook access to it by name. */}}
{{- define "civic-mcp.webhookConfigName" -}}
{{- include "civic-mcp.clusterScopedName" . }}
{{- end }}

{{- define "civic-mcp.webhookCertSecretName" -}}
{{- if .Values.webhook.certManager.enabled }}
{{- default (printf "%s-webhook-cert-manager-tls" (include "civic-mcp.fullname" .)) .Values.webhook.certManager.secretName | trunc 253 }}
{{- else }}
{{- /* rbac.yaml grants the webhook access to it by name. */}}
{{- printf "%s-webhook-tls" (include "civic-mcp.fullname" .) | trunc 253 }}
{{- end }}
{{- end }}

{{/* rbac.yaml grants get/update on this Lease name only. */}}
{{- define "civic-mcp.leaseName" -}}
{{- printf "%s-operator" (include "civic-mcp.fullname" .) | trunc 253 }}
{{- end }}

{{- define "civic-mcp.tokenUrlCaConfigMapName" -}}
{{- printf "%s-token-url-ca" (include "civic-mcp.fullname" .) | trunc 253 }}
{{- end }}

{{- define "civic-mcp.certificateName" -}}
{{- printf "%s-webhook" (include "civic-mcp.fullname" .) | trunc 253 }}
{{- end }}

{{- define "civic-mcp.issuerName" -}}
{{- printf "%s-selfsigned" (include "civic-mcp.fullname" .) | trunc 253 }}
{{- end }}

{{/* `repository:tag` or `repository@digest`; the tag defaults to the chart's appVersion. */}}
{{- define "civic-mcp.image" -}}
{{- $img := index . 0 }}
{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, for every container the chart runs. */}}
{{- define "civic-mcp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* An alert's labels: its severity (first of the list) and metrics.prometheusRule.alertLabels. */}}
{{- define "civic-mcp.alertLabels" -}}
severity: {{ index . 0 }}
{{- with index . 1 }}
{{ toYaml . }}
{{- end }}
{{- end }}
