// mcp-workload is the e2e suite's stand-in for a real workload: an MCP client built on the
// official Go SDK, talking to the sidecar over the SDK's streamable HTTP transport. The image has
// no shell, so every probe the tests need goes through this binary:
//
//	mcp-workload [serve] [flags]  one session at start (initialize, tools/list, tools/call), one
//	                              JSON line ("first_call"), then runs until SIGTERM ("stopping");
//	                              with --stream N it keeps a long tool call open meanwhile (below)
//	mcp-workload call [flags]     one fresh session, one JSON line ("call"); exit 0 ok, 1 not
//	mcp-workload once [flags]     the same for Jobs (event "once")
//
// Flags: --url URL (default $CIVIC_MCP_URL), --profile NAME (the URL from the injected
// $CIVIC_MCP_URL_<NAME> of a binding's named profile), --tool NAME (default whoami), --header K=V and
// --header-file K=PATH (repeatable; the value of a header file is read at call time, e.g. a
// per-user token), --timeout DURATION (default 20s).
//
// serve --stream N [--stream-interval D]: after the first call, one session calls the hub's
// `countdown` tool (N progress notifications D apart on one SSE stream) again and again
// ("streaming" is printed when the first starts). On SIGTERM the open call is carried to its
// end, as a well-behaved agent finishes its work before it exits, and the outcome ("stream") is
// printed and written to the termination log, where it survives the pod's deletion; the exit
// status is 0 only when that call succeeded with all N notifications.
//
// Output never carries a header value: a custom header may hold a user's token, so header values
// are scrubbed from error messages and the URL is printed without userinfo or query.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// version is reported as the MCP client implementation version.
const version = "0.1.0"

// Result is the one JSON line every mode prints.
type Result struct {
	Event      string   `json:"event"`
	OK         bool     `json:"ok"`
	StartedAt  string   `json:"started_at"`
	FinishedAt string   `json:"finished_at"`
	URL        string   `json:"url,omitempty"`
	Tools      []string `json:"tools"`
	Tool       string   `json:"tool"`
	// Whoami is the text content of the called tool's result (named after the default tool).
	Whoami string `json:"whoami"`
	Error  string `json:"error,omitempty"`
}

// Stopping is printed by serve when it is told to stop.
type Stopping struct {
	Event  string `json:"event"`
	At     string `json:"at"`
	Signal string `json:"signal"`
}

type header struct{ name, value, file string }

type options struct {
	url            string
	tool           string
	headers        []header
	timeout        time.Duration
	streamSteps    int
	streamInterval time.Duration
	terminationLog string
}

// StreamResult is what serve --stream reports when it stops.
type StreamResult struct {
	Event string `json:"event"`
	OK    bool   `json:"ok"`
	// Countdown calls completed, the last one included.
	Calls int `json:"calls"`
	// Whether the last call was open when the signal came (it was then carried to its end).
	OpenAtSignal bool `json:"open_at_signal"`
	// Progress notifications the last call received, of Steps.
	Progress   int64  `json:"progress"`
	Steps      int    `json:"steps"`
	Result     string `json:"result"`
	FinishedAt string `json:"finished_at"`
	Error      string `json:"error,omitempty"`
}

// headerFlag collects repeated --header / --header-file values.
type headerFlag struct {
	list   *[]header
	isFile bool
}

func (h headerFlag) String() string { return "" }

func (h headerFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return errors.New("want NAME=VALUE")
	}
	if h.isFile {
		*h.list = append(*h.list, header{name: name, file: value})
	} else {
		*h.list = append(*h.list, header{name: name, value: value})
	}
	return nil
}

func parseFlags(mode string, args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("mcp-workload "+mode, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.url, "url", os.Getenv("CIVIC_MCP_URL"), "MCP endpoint (default $CIVIC_MCP_URL)")
	profile := fs.String("profile", "", "call the binding's named profile NAME ($CIVIC_MCP_URL_<NAME>)")
	fs.StringVar(&o.tool, "tool", "whoami", "tool to call")
	fs.Var(headerFlag{list: &o.headers}, "header", "extra request header NAME=VALUE (repeatable)")
	fs.Var(headerFlag{list: &o.headers, isFile: true}, "header-file", "extra request header NAME=PATH, value read from the file (repeatable)")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Second, "bound of the whole session")
	if mode == "serve" {
		fs.IntVar(&o.streamSteps, "stream", 0, "keep a countdown call of this many steps open (0: off)")
		fs.DurationVar(&o.streamInterval, "stream-interval", 500*time.Millisecond, "time between countdown steps")
		fs.StringVar(&o.terminationLog, "termination-log", "/dev/termination-log", "where the stream outcome is written on exit")
	}
	if err := fs.Parse(args); err != nil {
		// The flag package quotes the bad value, and a header argument may be a token.
		if strings.Contains(err.Error(), "for flag -header") {
			return o, errors.New("--header and --header-file want NAME=VALUE (the value is not shown)")
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *profile != "" {
		env := profileURLEnv(*profile)
		if o.url = os.Getenv(env); o.url == "" {
			return o, fmt.Errorf("no URL for profile %q: %s is not set (is it one of the binding's profiles?)", *profile, env)
		}
	}
	if o.url == "" {
		return o, errors.New("no MCP URL: set CIVIC_MCP_URL or pass --url")
	}
	u, err := url.Parse(o.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return o, fmt.Errorf("bad MCP URL %q: want http(s)://host[:port]/path", displayURL(o.url))
	}
	if o.timeout <= 0 {
		return o, errors.New("--timeout must be positive")
	}
	if o.streamSteps < 0 || o.streamSteps > 50 || o.streamInterval < 0 || o.streamInterval > 2*time.Second {
		return o, errors.New("--stream wants 0..50 steps and --stream-interval 0..2s (the hub's countdown bounds)")
	}
	return o, nil
}

// profileURLEnv is the variable the operator injects for a named profile: CIVIC_MCP_URL_ and the
// name in upper case with '-' as '_'.
func profileURLEnv(name string) string {
	return "CIVIC_MCP_URL_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// displayURL drops userinfo, query and fragment: any of them may carry a credential.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "[unparsable URL]"
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.String()
}

// headerTransport adds the configured headers to every request the SDK sends.
type headerTransport struct {
	base    http.RoundTripper
	headers http.Header
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range t.headers {
		r.Header.Del(k)
		for _, v := range vs {
			r.Header.Add(k, v)
		}
	}
	return t.base.RoundTrip(r)
}

var (
	bearerRE   = regexp.MustCompile(`(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+`)
	urlQueryRE = regexp.MustCompile(`(https?://[^\s"?#]*)[?#][^\s"]*`)
	userinfoRE = regexp.MustCompile(`(https?://)[^/\s"@]*@`)
)

// scrub removes every header value, URL userinfo and query, and anything shaped like a bearer
// token from a message (net/http errors quote the request URL).
func scrub(msg string, headers http.Header) string {
	for _, vs := range headers {
		for _, v := range vs {
			if len(v) >= 4 {
				msg = strings.ReplaceAll(msg, v, "[redacted]")
			}
		}
	}
	msg = urlQueryRE.ReplaceAllString(msg, "${1}?[redacted]")
	msg = userinfoRE.ReplaceAllString(msg, "${1}[redacted]@")
	return bearerRE.ReplaceAllString(msg, "${1}[redacted]")
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// connect reads the configured headers into hdrs (for scrubbing) and initializes a session.
func connect(ctx context.Context, o options, hdrs http.Header, opts *mcp.ClientOptions) (*mcp.ClientSession, error) {
	for _, h := range o.headers {
		v := h.value
		if h.file != "" {
			b, err := os.ReadFile(h.file)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", h.name, err)
			}
			v = strings.TrimSpace(string(b))
		}
		hdrs.Add(h.name, v)
	}
	transport := &mcp.StreamableClientTransport{
		Endpoint: o.url,
		HTTPClient: &http.Client{Transport: headerTransport{
			base:    http.DefaultTransport,
			headers: hdrs,
		}},
		// One attempt, as a workload's first call right after start: a failure must show.
		MaxRetries: -1,
		// Request/response only; the probe needs no server-initiated messages.
		DisableStandaloneSSE: true,
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "civic-mcp-workload", Version: version}, opts)
	cs, err := client.Connect(ctx, transport, nil)
	if err != nil {
		return nil, fmt.Errorf("initialize: %w", err)
	}
	return cs, nil
}

// stream calls `countdown` on one session until stop is closed, then returns the outcome of
// the call that was open at that moment (or of the last one, if none was).
func stream(o options, stop <-chan struct{}) StreamResult {
	res := StreamResult{Event: "stream", Steps: o.streamSteps}
	var progress atomic.Int64
	hdrs := http.Header{}
	err := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		cs, err := connect(ctx, o, hdrs, &mcp.ClientOptions{
			ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) {
				progress.Add(1)
			},
		})
		cancel()
		if err != nil {
			return err
		}
		defer func() { _ = cs.Close() }()
		bound := o.timeout + time.Duration(o.streamSteps)*o.streamInterval
		for {
			select {
			case <-stop:
				return nil
			default:
			}
			progress.Store(0)
			params := &mcp.CallToolParams{Name: "countdown", Arguments: map[string]any{
				"steps": o.streamSteps, "intervalMs": o.streamInterval.Milliseconds(),
			}}
			params.SetProgressToken(fmt.Sprintf("countdown-%d", res.Calls+1))
			if res.Calls == 0 {
				emit(map[string]string{"event": "streaming", "at": now()})
			}
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			out, err := cs.CallTool(ctx, params)
			cancel()
			select {
			case <-stop:
				res.OpenAtSignal = true
			default:
			}
			res.Calls++
			// The SDK runs notification handlers concurrently with the call's return, so the
			// last step's handler may still be on its way although its event came first.
			for deadline := time.Now().Add(2 * time.Second); err == nil && progress.Load() < int64(o.streamSteps) && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			res.Progress = progress.Load()
			if err != nil {
				return fmt.Errorf("tools/call countdown: %w", err)
			}
			res.Result = ""
			for _, c := range out.Content {
				if t, ok := c.(*mcp.TextContent); ok {
					res.Result += t.Text
				}
			}
			if out.IsError || res.Progress != int64(o.streamSteps) {
				return fmt.Errorf("countdown: error %v, %d of %d progress notifications", out.IsError, res.Progress, o.streamSteps)
			}
			if res.OpenAtSignal {
				return nil
			}
		}
	}()
	res.FinishedAt = now()
	if err != nil {
		res.Error = scrub(err.Error(), hdrs)
	} else {
		res.OK = res.Calls > 0
	}
	return res
}

// session runs initialize, tools/list and tools/call once, on a fresh connection.
func session(ctx context.Context, o options, event string, started time.Time) Result {
	res := Result{
		Event:     event,
		StartedAt: started.UTC().Format(time.RFC3339Nano),
		URL:       displayURL(o.url),
		Tools:     []string{},
		Tool:      o.tool,
	}
	hdrs := http.Header{}
	err := func() error {
		ctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		cs, err := connect(ctx, o, hdrs, nil)
		if err != nil {
			return err
		}
		defer func() { _ = cs.Close() }()
		tools, err := cs.ListTools(ctx, &mcp.ListToolsParams{})
		if err != nil {
			return fmt.Errorf("tools/list: %w", err)
		}
		for _, t := range tools.Tools {
			res.Tools = append(res.Tools, t.Name)
		}
		out, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: o.tool, Arguments: map[string]any{}})
		if err != nil {
			return fmt.Errorf("tools/call %s: %w", o.tool, err)
		}
		var texts []string
		for _, c := range out.Content {
			if t, ok := c.(*mcp.TextContent); ok {
				texts = append(texts, t.Text)
			}
		}
		res.Whoami = strings.Join(texts, "\n")
		if out.IsError {
			return fmt.Errorf("tools/call %s: the tool reported an error", o.tool)
		}
		return nil
	}()
	res.FinishedAt = now()
	if err != nil {
		res.Error = scrub(err.Error(), hdrs)
	} else {
		res.OK = true
	}
	return res
}

func emit(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mcp-workload: encoding output: %v\n", err)
		return
	}
	fmt.Println(string(b))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mcp-workload [serve|call|once] [--url URL] [--tool NAME] [--header NAME=VALUE]... [--header-file NAME=PATH]... [--timeout 20s]")
	fmt.Fprintln(os.Stderr, "       mcp-workload serve --stream STEPS [--stream-interval 500ms] [--termination-log /dev/termination-log] [...]")
}

func main() {
	started := time.Now()
	mode, args := "serve", os.Args[1:]
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	switch mode {
	case "serve", "call", "once":
	case "help":
		usage()
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "mcp-workload: unknown mode %q\n", mode)
		usage()
		os.Exit(2)
	}
	o, err := parseFlags(mode, args)
	if errors.Is(err, flag.ErrHelp) {
		usage()
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mcp-workload %s: %v\n", mode, err)
		usage()
		os.Exit(2)
	}

	if mode != "serve" {
		res := session(context.Background(), o, mode, started)
		emit(res)
		if !res.OK {
			os.Exit(1)
		}
		return
	}

	// Registered before the first call so a SIGTERM during it is not lost.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	emit(session(context.Background(), o, "first_call", started))
	stop := make(chan struct{})
	streamed := make(chan StreamResult, 1)
	if o.streamSteps > 0 {
		go func() { streamed <- stream(o, stop) }()
	}
	sig := <-sigs
	emit(Stopping{Event: "stopping", At: now(), Signal: sig.String()})
	if o.streamSteps == 0 {
		return
	}
	close(stop)
	res := <-streamed
	emit(res)
	if b, err := json.Marshal(res); err == nil {
		// Absent outside a pod; the stdout line is the record then.
		_ = os.WriteFile(o.terminationLog, b, 0o644)
	}
	if !res.OK {
		os.Exit(1)
	}
}
