// Command dashboard-check validates Grafana dashboards against the dashboard schema Grafana's own
// Foundation SDK is generated from: strict decoding (unknown fields, wrong types and missing
// required fields fail, panel options and queries decoded by their plugin's schema), then the
// schema's constraints. It also prints every query expression, one per line as
// "<panel title>\t<refId>\t<expr>", so the caller can check the PromQL with promtool.
//
// Usage: dashboard-check DASHBOARD.json >exprs.tsv
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-check DASHBOARD.json")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "dashboard-check: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// failed says whether err holds an error: the SDK's strict decoder returns an empty error list,
// typed as a non-nil error, when there is none.
func failed(err error) bool {
	var list cog.BuildErrors
	if errors.As(err, &list) {
		return len(list) > 0
	}
	return err != nil
}

func check(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	plugins.RegisterDefaultPlugins()
	var strict dashboard.Dashboard
	if err := strict.UnmarshalJSONStrict(raw); failed(err) {
		return fmt.Errorf("does not match the dashboard schema: %w", err)
	}
	// The strict pass leaves error-free panels unset (it stops at that empty error list), so the
	// dashboard is read again, leniently, for the constraints and the queries.
	var d dashboard.Dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return err
	}
	if err := d.Validate(); failed(err) {
		return fmt.Errorf("violates the dashboard schema's constraints: %w", err)
	}
	if d.Title == nil || *d.Title == "" || d.Uid == nil || *d.Uid == "" {
		return fmt.Errorf("needs a title and a uid")
	}
	queries := 0
	for _, p := range d.Panels {
		if p.Panel == nil {
			continue // rows
		}
		title := ""
		if p.Panel.Title != nil {
			title = *p.Panel.Title
		}
		if len(p.Panel.Targets) == 0 {
			return fmt.Errorf("panel %q has no query", title)
		}
		for _, t := range p.Panel.Targets {
			q, ok := t.(*prometheus.Dataquery)
			if !ok {
				return fmt.Errorf("panel %q: a query that is not a Prometheus query: %T", title, t)
			}
			if q.Expr == "" {
				return fmt.Errorf("panel %q: query %v has no expression", title, q.RefId)
			}
			refID := ""
			if q.RefId != nil {
				refID = *q.RefId
			}
			line, _ := json.Marshal(q.Expr)
			fmt.Printf("%s\t%s\t%s\n", title, refID, line)
			queries++
		}
	}
	if queries == 0 {
		return fmt.Errorf("has no queries")
	}
	fmt.Fprintf(os.Stderr, "dashboard-check: %s: schema ok, %d queries\n", path, queries)
	return nil
}
