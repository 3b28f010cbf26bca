package main

import (
	"net/http"
	"strings"
	"testing"
)

func TestScrubHidesCredentials(t *testing.T) {
	hdrs := http.Header{"X-Civic-Subject": {"eyJhbGciOi.user-token.sig"}}
	msg := `Post "https://u:pw@hub.example/mcp?token=abc#frag": Bearer eyJraw.tok.en; got eyJhbGciOi.user-token.sig back`
	got := scrub(msg, hdrs)
	for _, secret := range []string{"user-token", "token=abc", "pw@", "eyJraw", "frag"} {
		if strings.Contains(got, secret) {
			t.Errorf("scrub left %q in %q", secret, got)
		}
	}
	if !strings.Contains(got, "https://[redacted]@hub.example/mcp?[redacted]") {
		t.Errorf("scrub lost the URL's shape: %q", got)
	}
}

func TestDisplayURL(t *testing.T) {
	if got := displayURL("http://a:b@127.0.0.1:8931/hub/mcp?k=v#f"); got != "http://127.0.0.1:8931/hub/mcp" {
		t.Errorf("displayURL = %q", got)
	}
}

func TestParseFlags(t *testing.T) {
	t.Setenv("CIVIC_MCP_URL", "http://127.0.0.1:8931/hub/mcp")
	o, err := parseFlags("call", []string{"--header", "X-A=1", "--header-file", "X-B=/f", "--tool", "t"})
	if err != nil {
		t.Fatal(err)
	}
	if o.url != "http://127.0.0.1:8931/hub/mcp" || o.tool != "t" || len(o.headers) != 2 || o.headers[1].file != "/f" {
		t.Errorf("parsed %+v", o)
	}
	for _, bad := range [][]string{{"--header", "novalue"}, {"--url", "ftp://x"}, {"extra"}, {"--timeout", "0s"}} {
		if _, err := parseFlags("call", bad); err == nil {
			t.Errorf("accepted %v", bad)
		} else if strings.Contains(err.Error(), "novalue") {
			t.Errorf("error echoes the header argument: %v", err)
		}
	}
	t.Setenv("CIVIC_MCP_URL", "")
	if _, err := parseFlags("serve", nil); err == nil || !strings.Contains(err.Error(), "CIVIC_MCP_URL") {
		t.Errorf("no URL: %v", err)
	}
}

func TestParseStreamFlags(t *testing.T) {
	t.Setenv("CIVIC_MCP_URL", "http://127.0.0.1:8931/hub/mcp")
	o, err := parseFlags("serve", []string{"--stream", "8", "--stream-interval", "250ms"})
	if err != nil || o.streamSteps != 8 || o.streamInterval.Milliseconds() != 250 || o.terminationLog != "/dev/termination-log" {
		t.Fatalf("parsed %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"--stream", "51"}, {"--stream", "-1"}, {"--stream-interval", "3s"}} {
		if _, err := parseFlags("serve", bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
	if _, err := parseFlags("call", []string{"--stream", "3"}); err == nil {
		t.Errorf("--stream is a serve flag only")
	}
}

func TestProfileFlagReadsTheInjectedURL(t *testing.T) {
	t.Setenv("CIVIC_MCP_URL", "http://127.0.0.1:8931/hub/mcp")
	t.Setenv("CIVIC_MCP_URL_BILLING_TOOLS", "http://127.0.0.1:8931/profiles/billing-tools/hub/mcp")
	o, err := parseFlags("call", []string{"--profile", "billing-tools"})
	if err != nil {
		t.Fatal(err)
	}
	if o.url != "http://127.0.0.1:8931/profiles/billing-tools/hub/mcp" {
		t.Errorf("url %q", o.url)
	}
	if _, err := parseFlags("call", []string{"--profile", "sales"}); err == nil || !strings.Contains(err.Error(), "CIVIC_MCP_URL_SALES") {
		t.Errorf("unknown profile: %v", err)
	}
}
