package push

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// Defaults for a ClientConfig left at its zero values.
const (
	DefaultMaxResponseBytes = 64 << 10
	DefaultUserAgent        = "postbus"
)

// ErrForbiddenAddress is wrapped in the dial error when the SSRF guard
// refuses the IP address a connection was about to be made to.
var ErrForbiddenAddress = errors.New("forbidden address")

// ErrInvalidURL is wrapped by a delivery's error when its URL does not pass
// broker.ValidateWebhookURL (checked at create and PATCH too; this is the
// last line, for a URL stored by an older version).
var ErrInvalidURL = errors.New("invalid webhook url")

// ClientConfig configures the outbound HTTP client shared by every push
// subscription.
type ClientConfig struct {
	// AllowPrivate permits loopback, private, link-local and other
	// non-public targets (--allow-private-webhooks, on in dev).
	AllowPrivate bool
	// MaxResponseBytes is how much of a response body is read (default 64
	// KiB). A longer body is not read further: its connection is closed.
	MaxResponseBytes int64
	// UserAgent is sent with every delivery, "postbus/<version>".
	UserAgent string
}

// Client delivers webhooks. It holds one http.Client, with one connection
// pool, for all subscriptions, and is safe for concurrent use.
type Client struct {
	cfg       ClientConfig
	transport *http.Transport
	hc        *http.Client
}

// NewClient returns a Client whose dialer enforces the SSRF guard (unless
// cfg.AllowPrivate), which ignores proxy settings from the environment and
// never follows redirects.
func NewClient(cfg ClientConfig) *Client {
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if !cfg.AllowPrivate {
		// The check runs on the address actually being connected to, after
		// name resolution, so a name that resolves (or re-resolves, as in
		// DNS rebinding) to a forbidden address is refused too.
		dialer.Control = guardControl
	}
	t := &http.Transport{
		// No Proxy: a proxy would make the connection, and the guard would
		// only ever see the proxy's address.
		Proxy:             nil,
		DialContext:       dialer.DialContext,
		ForceAttemptHTTP2: true,
		// Keep as many idle connections to one host as deliveries may be in
		// flight to it (subscriptions × max_in_flight, often one receiver
		// behind many subscriptions): with fewer, every answer beyond the
		// pool closes its connection and the next delivery dials again,
		// which cost a sixth of the CPU of a 100-subscription fan-out. An
		// idle connection exists only because that many were busy at once,
		// and goes after IdleConnTimeout.
		MaxIdleConns:           4096,
		MaxIdleConnsPerHost:    4096,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		// Responses only feed the attempt log; asking for gzip would make
		// the transport inflate whatever a subscriber sends.
		DisableCompression: true,
		TLSClientConfig:    &tls.Config{MinVersion: tls.VersionTLS12},
	}
	return &Client{
		cfg:       cfg,
		transport: t,
		hc: &http.Client{
			Transport: t,
			// A 3xx is the attempt's result: following it would send the
			// message (and its signatures) somewhere nobody subscribed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Close closes idle connections. It may be called any number of times;
// deliveries after Close still work, opening new connections.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	return nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// forbiddenAddrError is the guard's refusal, naming the address.
type forbiddenAddrError struct{ addr netip.Addr }

func (e *forbiddenAddrError) Error() string { return "forbidden address " + e.addr.String() }
func (e *forbiddenAddrError) Unwrap() error { return ErrForbiddenAddress }

// guardControl is the dialer's Control hook: it runs after the address is
// resolved and before connect(2).
func guardControl(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		// Control is always given a numeric address; refuse anything else
		// rather than guess.
		return fmt.Errorf("%w: unparsable address %q", ErrForbiddenAddress, address)
	}
	if forbidden(ap.Addr()) {
		return &forbiddenAddrError{ap.Addr().Unmap().WithZone("")}
	}
	return nil
}

var forbiddenPrefixes = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",       // "this network"; 0.0.0.0 reaches the local host
		"10.0.0.0/8",      // private
		"100.64.0.0/10",   // carrier-grade NAT
		"127.0.0.0/8",     // loopback
		"169.254.0.0/16",  // link-local, cloud metadata 169.254.169.254
		"172.16.0.0/12",   // private
		"192.0.0.0/24",    // IETF protocol assignments
		"192.0.2.0/24",    // documentation
		"192.168.0.0/16",  // private
		"198.18.0.0/15",   // benchmarking; also fake-IP DNS of local proxies
		"198.51.100.0/24", // documentation
		"203.0.113.0/24",  // documentation
		"224.0.0.0/4",     // multicast
		"240.0.0.0/4",     // reserved, and 255.255.255.255 broadcast
		"::/96",           // unspecified, loopback, IPv4-compatible (deprecated)
		"::ffff:0:0:0/96", // IPv4-translated (SIIT)
		"100::/64",        // discard-only
		"2001:db8::/32",   // documentation
		"64:ff9b:1::/48",  // local-use NAT64
		"fc00::/7",        // unique local, including AWS metadata fd00:ec2::254
		"fe80::/10",       // link-local
		"fec0::/10",       // site-local (deprecated, still routed by some)
		"ff00::/8",        // multicast
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

var (
	nat64Prefix  = netip.MustParsePrefix("64:ff9b::/96")
	sixToFourPfx = netip.MustParsePrefix("2002::/16")
)

// forbidden reports whether the SSRF guard refuses connections to addr.
// IPv4-mapped IPv6 addresses are judged by their IPv4 address, as are the
// IPv4 addresses embedded in NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
// addresses, which translate to them on the way out.
func forbidden(addr netip.Addr) bool {
	if !addr.IsValid() {
		return true
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		b := addr.As16()
		switch {
		case nat64Prefix.Contains(addr):
			if forbidden(netip.AddrFrom4([4]byte(b[12:16]))) {
				return true
			}
		case sixToFourPfx.Contains(addr):
			if forbidden(netip.AddrFrom4([4]byte(b[2:6]))) {
				return true
			}
		}
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
