package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAPI is what the fake brokers of the three tools share: the server,
// topic creation, the subscription table and the record of the promises
// the tool broke. A fake embeds it, adds its own handlers to mux in its
// constructor, then calls serve.
type fakeAPI struct {
	tb    testing.TB
	srv   *httptest.Server
	mux   *http.ServeMux
	topic string

	// mu guards the fields below and the fields the embedding fake says it
	// guards.
	mu       sync.Mutex
	creates  int                // topic creates
	subs     map[string]fakeSub // live subscriptions by id
	created  int                // subscriptions created
	deleted  int
	gone     map[string]bool // groups whose subscription was deleted
	problems []string        // broken promises of the tool; must stay empty
}

type fakeSub struct{ group, url string }

// init readies f for topic, with the topic and delete-subscription
// handlers on f.mux.
func (f *fakeAPI) init(tb testing.TB, topic string) {
	tb.Helper()
	f.tb, f.topic = tb, topic
	f.subs = make(map[string]fakeSub)
	f.gone = make(map[string]bool)
	f.mux = http.NewServeMux()
	f.mux.HandleFunc("PUT /v1/topics/{topic}", f.createTopic)
	f.mux.HandleFunc("DELETE /v1/subscriptions/{id}", f.deleteSub)
}

// serve starts the server; it is closed when the test ends, after the
// cleanups the fake registers later.
func (f *fakeAPI) serve() {
	f.srv = httptest.NewServer(f.mux)
	f.tb.Cleanup(f.srv.Close)
}

func (f *fakeAPI) createTopic(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.creates++
	if r.PathValue("topic") != f.topic || string(b) != `{"queues":4}` {
		f.problemf("create topic %q with %q, want %q with {\"queues\":4}", r.PathValue("topic"), b, f.topic)
	}
	f.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
}

func (f *fakeAPI) deleteSub(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := r.PathValue("id")
	if _, ok := f.subs[id]; !ok {
		f.problemf("delete of subscription %q, which the tool did not create", id)
		w.WriteHeader(http.StatusNotFound)
		return
	}
	f.gone[f.subs[id].group] = true
	delete(f.subs, id)
	f.deleted++
	w.WriteHeader(http.StatusNoContent)
}

// addSub records a subscription of group (to url, for push) and answers
// 201 with its id, as the broker does; f.mu must be held.
func (f *fakeAPI) addSub(w http.ResponseWriter, group, url string) {
	f.created++
	id := fmt.Sprintf("sub%d", f.created)
	f.subs[id] = fakeSub{group: group, url: url}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"id":%q,"group":%q,"topic":%q}`, id, group, f.topic)
}

// problemf records a broken promise; f.mu must be held.
func (f *fakeAPI) problemf(format string, args ...any) {
	if len(f.problems) < 20 {
		f.problems = append(f.problems, fmt.Sprintf(format, args...))
	}
}

// check fails tb if the tool broke a promise or left a subscription behind.
func (f *fakeAPI) check(tb testing.TB) {
	tb.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.problems {
		tb.Error(p)
	}
	if len(f.subs) != 0 || f.deleted != f.created {
		tb.Errorf("created %d subscriptions, deleted %d, %d left", f.created, f.deleted, len(f.subs))
	}
}

// writeProblem answers status with a problem+json body, as the broker does.
func writeProblem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"type":"about:blank","title":%q,"status":%d,"detail":%q,"code":%q}`,
		http.StatusText(status), status, detail, code)
}

// runner runs one tool with args and returns what it printed.
type runner func(tb testing.TB, ctx context.Context, args ...string) (string, error)

// toolRunner returns the runner of tool.
func toolRunner(tool func(context.Context, []string, io.Writer) error) runner {
	return func(tb testing.TB, ctx context.Context, args ...string) (string, error) {
		tb.Helper()
		var out bytes.Buffer
		err := tool(ctx, args, &out)
		return out.String(), err
	}
}

var (
	runPublish  = toolRunner(Publish)
	runPushTool = toolRunner(Push)
	runPullTool = toolRunner(Pull)
)

// checkTarget is checkTargetFor as bench publish calls it.
func checkTarget(ctx context.Context, rawURL string, allowRemote bool) error {
	return checkTargetFor(ctx, "bench publish", rawURL, allowRemote)
}

// flagCase is a command line a tool must refuse before it sends anything.
type flagCase struct {
	name string
	args []string
}

// refusesFlags runs each case, its args after common, and fails it unless
// the tool returns a flag error: an error that is neither --help nor one
// of the outcomes of a run.
func refusesFlags(t *testing.T, run runner, common []string, cases []flagCase) {
	t.Helper()
	notFlagErrs := []error{flag.ErrHelp, ErrRemoteTarget, ErrDelivery, ErrPullCheck}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(t, t.Context(), append(slices.Clip(common), tt.args...)...)
			if err == nil || slices.ContainsFunc(notFlagErrs, func(e error) bool { return errors.Is(err, e) }) {
				t.Fatalf("%q = %v, want a flag error\n%s", tt.args, err, out)
			}
		})
	}
}

// checkHelp runs the tool with --help and fails unless it returns
// flag.ErrHelp and a usage that holds every one of want. It returns the
// usage.
func checkHelp(t *testing.T, run runner, want ...string) string {
	t.Helper()
	out, err := run(t, t.Context(), "--help")
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help = %v, want flag.ErrHelp", err)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("usage lacks %q:\n%s", w, out)
		}
	}
	return out
}

// refusesRemote runs tool against u, which is not loopback, and fails
// unless it is refused with ErrRemoteTarget, in an error that starts with
// the tool's name and says how to override. It returns what was printed.
func refusesRemote(t *testing.T, run runner, tool, u string, args ...string) string {
	t.Helper()
	out, err := run(t, t.Context(), append([]string{"--url", u}, args...)...)
	if !errors.Is(err, ErrRemoteTarget) || !strings.HasPrefix(err.Error(), tool+" ") {
		t.Fatalf("%s --url %s = %v, want ErrRemoteTarget from %s", tool, u, err, tool)
	}
	if !strings.Contains(err.Error(), "--allow-remote") {
		t.Errorf("error %q does not say how to override", err)
	}
	return out
}

// runInterrupted runs a tool with args and cancels it, as SIGINT does, once
// n values have come from progressed. It checks that the tool returns
// promptly with context.Canceled and a report marked interrupted, and
// returns the report.
func runInterrupted(t *testing.T, run runner, progressed <-chan struct{}, n int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cancelled := make(chan time.Time, 1)
	go func() {
		for range n {
			select {
			case <-progressed:
			case <-ctx.Done():
				return
			}
		}
		cancelled <- time.Now()
		cancel()
	}()
	out, err := run(t, ctx, args...)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run = %v, want context.Canceled\n%s", err, out)
	}
	// Measured from the interrupt, not the start: how long the run took
	// to make progress n times depends on the machine's load; what is
	// tested is that the interrupt is not waited out (the runs asked for
	// are 30 s and more).
	if took := time.Since(<-cancelled); took > 5*time.Second {
		t.Errorf("interrupted run took %s to return after the interrupt", took)
	}
	if !strings.Contains(out, "(interrupted)") {
		t.Errorf("report not marked interrupted:\n%s", out)
	}
	return out
}

// reportInt reads the integer after label in the report line starting
// with line; with label "", the first one after line.
func reportInt(tb testing.TB, out, line, label string) int64 {
	tb.Helper()
	pat := `(?m)^  ` + regexp.QuoteMeta(line) + `\s+(\d+)`
	if label != "" {
		pat = `(?m)^  ` + regexp.QuoteMeta(line) + `\s.*?\b` + regexp.QuoteMeta(label) + ` (\d+)`
	}
	re := regexp.MustCompile(pat)
	m := re.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("no %q … %q in report:\n%s", line, label, out)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// reportDur reads the duration after label in the report line starting
// with line.
func reportDur(tb testing.TB, out, line, label string) time.Duration {
	tb.Helper()
	re := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(line) + `\s.*?\b` + regexp.QuoteMeta(label) + ` (\S+)`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("no %q … %q in report:\n%s", line, label, out)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		tb.Fatalf("%s %s: %v", line, label, err)
	}
	return d
}
