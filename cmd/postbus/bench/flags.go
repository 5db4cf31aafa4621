package bench

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// ErrRemoteTarget is returned when --url names a host that is not loopback
// and --allow-remote was not given.
var ErrRemoteTarget = errors.New("target is not a loopback address")

// Limits every tool shares; they keep a typo from allocating gigabytes.
const (
	maxSize       = 16 << 20
	maxConns      = 10000
	lookupTimeout = 2 * time.Second
)

// topicRE is the broker's topic name rule; checking it here means the name
// can go into URLs and JSON without escaping.
var topicRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)

// commonFlags are the flags every tool takes, with the same defaults and
// the same rules. Each tool's config embeds them and adds its own.
type commonFlags struct {
	url         string // base URL, no trailing slash
	topic       string
	conns       int
	duration    time.Duration
	rate        float64 // messages per second; 0 = closed loop
	size        int
	interval    time.Duration
	allowRemote bool
	create      bool
	queues      int
	timeout     time.Duration
	brokerPID   int // 0 = do not sample the broker's memory

	tool    string // "bench push": errors start with it
	minSize int    // the smallest --size the tool takes
}

// toolFlags is how one tool presents the common flags: its name and usage,
// its --topic default and smallest --size, and the help texts in which it
// differs from the others. An empty help text keeps the shared one.
type toolFlags struct {
	name                 string // "bench push"
	usageHead, usageTail string // around the flag list of --help
	topic                string
	minSize              int

	topicHelp, connsHelp, durationHelp, rateHelp, sizeHelp    string
	intervalHelp, allowRemoteHelp, timeoutHelp, brokerPIDHelp string
}

// flagSet returns the flag set of tool t with the common flags registered
// on c; the caller adds the tool's own. --help and parse errors print to
// out.
func (c *commonFlags) flagSet(t *toolFlags, out io.Writer) *flag.FlagSet {
	c.tool, c.minSize = t.name, t.minSize
	fs := flag.NewFlagSet(t.name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.url, "url", "http://127.0.0.1:8080", "broker base `URL` (http or https)")
	fs.StringVar(&c.topic, "topic", t.topic,
		cmp.Or(t.topicHelp, "`topic` to publish to; created first unless --create=false"))
	fs.IntVar(&c.conns, "conns", 64,
		cmp.Or(t.connsHelp, "publishers (closed loop) or connections (open loop), one request in flight on each"))
	fs.DurationVar(&c.duration, "duration", 10*time.Second, cmp.Or(t.durationHelp, "how long to publish"))
	fs.Float64Var(&c.rate, "rate", 0,
		cmp.Or(t.rateHelp, "open loop at this many `messages` per second (0 = closed loop)"))
	fs.IntVar(&c.size, "size", 256,
		cmp.Or(t.sizeHelp, fmt.Sprintf("message body size in `bytes` (at least %d: the stamp)", stampLen)))
	fs.DurationVar(&c.interval, "interval", time.Second, cmp.Or(t.intervalHelp, "print a progress line this often (0 = off)"))
	fs.BoolVar(&c.allowRemote, "allow-remote", false,
		cmp.Or(t.allowRemoteHelp, "allow a --url whose host is not loopback (think before pointing load at a shared broker)"))
	fs.BoolVar(&c.create, "create", true, "create the topic with PUT /v1/topics/{topic} before the run")
	fs.IntVar(&c.queues, "queues", 4, "queues for the topic when it is created")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second,
		cmp.Or(t.timeoutHelp, "per-request timeout of publishes and API calls"))
	fs.IntVar(&c.brokerPID, "broker-pid", 0,
		cmp.Or(t.brokerPIDHelp, "sample this `pid`'s VmRSS from /proc/<pid>/status every second and report the maximum"))
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), t.usageHead)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), t.usageTail)
	}
	return fs
}

// parse parses args with fs and refuses positional arguments. It checks
// the common flags first, because the tool's own rules may lean on them
// (--batch × --size needs a sane --size), then hands check the names of the
// flags given, and the URL last. Errors start with the tool's name; --help
// returns flag.ErrHelp.
func (c *commonFlags) parse(fs *flag.FlagSet, args []string, check func(set map[string]bool) error) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", c.tool, fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	c.url = strings.TrimRight(c.url, "/")
	err := c.validateCommon()
	if err == nil {
		err = check(set)
	}
	if err == nil {
		err = validateURL(c.url)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", c.tool, err)
	}
	return nil
}

// validateCommon checks the common flags but --url.
func (c *commonFlags) validateCommon() error {
	switch {
	case c.conns < 1 || c.conns > maxConns:
		return fmt.Errorf("--conns %d: must be 1..%d", c.conns, maxConns)
	case c.size < c.minSize || c.size > maxSize:
		return fmt.Errorf("--size %d: must be %d..%d", c.size, c.minSize, maxSize)
	case c.rate < 0 || c.rate != c.rate:
		return fmt.Errorf("--rate %v: must be >= 0", c.rate)
	case c.interval < 0:
		return fmt.Errorf("--interval %s: must be >= 0", c.interval)
	case c.timeout <= 0:
		return fmt.Errorf("--timeout %s: must be > 0", c.timeout)
	case c.queues < 1:
		return fmt.Errorf("--queues %d: must be >= 1", c.queues)
	case c.brokerPID < 0:
		return fmt.Errorf("--broker-pid %d: must be >= 0", c.brokerPID)
	case !topicRE.MatchString(c.topic):
		return fmt.Errorf("--topic %q: must match %s", c.topic, topicRE)
	}
	return nil
}

// validateURL checks a --url flag: http(s), a host, nothing but a path.
func validateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("--url %q: scheme must be http or https", raw)
	}
	if u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("--url %q: want scheme://host[:port][/path] only", raw)
	}
	return nil
}

// checkTarget refuses --url if its host is not loopback, unless
// --allow-remote was given.
func (c *commonFlags) checkTarget(ctx context.Context) error {
	return checkTargetFor(ctx, c.tool, c.url, c.allowRemote)
}

// sampleBroker starts sampling --broker-pid every second. Without
// --broker-pid it returns a nil sampler, which samples nothing.
func (c *commonFlags) sampleBroker() (*rssSampler, error) {
	if c.brokerPID == 0 {
		return nil, nil
	}
	s, err := startRSSSampler(c.brokerPID, time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.tool, err)
	}
	return s, nil
}

// checkTargetFor refuses a URL whose host is not loopback unless
// allowRemote; errors start with tool.
func checkTargetFor(ctx context.Context, tool, rawURL string, allowRemote bool) error {
	if allowRemote {
		return nil
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("check target %q: %w", rawURL, err)
	}
	host := u.Hostname()
	refuse := func(why string) error {
		return fmt.Errorf("%s %s: %s: %w (pass --allow-remote to load it anyway)", tool, rawURL, why, ErrRemoteTarget)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Unmap().IsLoopback() {
			return nil
		}
		return refuse(fmt.Sprintf("%s is not a loopback address", host))
	}
	lower := strings.ToLower(strings.TrimSuffix(host, "."))
	if lower == "localhost" || strings.HasSuffix(lower, ".localhost") {
		return nil // RFC 6761: always loopback
	}
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		return refuse(fmt.Sprintf("cannot tell whether %s is loopback: %v", host, err))
	}
	for _, a := range addrs {
		if !a.Unmap().IsLoopback() {
			return refuse(fmt.Sprintf("%s resolves to %s", host, a))
		}
	}
	if len(addrs) == 0 {
		return refuse(fmt.Sprintf("%s resolves to nothing", host))
	}
	return nil
}
