package replica

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// newTestLayer listens on a free loopback port with secret.
func newTestLayer(t *testing.T, secret string) *authLayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &authLayer{ln: ln, adv: ln.Addr(), secret: []byte(secret), logger: slog.New(slog.DiscardHandler),
		m: newMetrics(&Node{}), conns: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// TestTransportNeedsTheSecret: a raft connection gets through only when
// both sides hold the secret; one that does not is refused and counted,
// and raft never sees its bytes.
func TestTransportNeedsTheSecret(t *testing.T) {
	const good = "0123456789abcdef0123456789abcdef-good"
	cases := []struct {
		name       string
		dialSecret string
		raw        []byte // with dialSecret "": bytes a stranger sends instead of a handshake
		ok         bool
		// refused: the server counts a wrong proof (an ERROR); else a
		// connection gone before any proof (a WARN, counted apart).
		refused bool
	}{
		{name: "same secret", dialSecret: good, ok: true},
		{name: "another secret", dialSecret: "0123456789abcdef0123456789abcdef-evil", refused: true},
		{name: "raft bytes without a handshake", raw: append([]byte{0}, bytes.Repeat([]byte{0x85}, 63)...), refused: true},
		{name: "nothing sent", raw: []byte{}},
		{name: "half an answer", raw: bytes.Repeat([]byte{1}, 40)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newTestLayer(t, good)
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := srv.Accept(); err == nil {
					accepted <- c
				}
			}()
			if tc.raw != nil {
				c, err := net.Dial("tcp", srv.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.Write(tc.raw); err != nil {
					t.Fatal(err)
				}
				if len(tc.raw) < nonceLen+32 {
					// Gone before a whole answer.
					_ = c.(*net.TCPConn).CloseWrite()
				}
				// The server closes the connection: reads end.
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			} else {
				cli := newTestLayer(t, tc.dialSecret)
				c, err := cli.Dial(raft.ServerAddress(srv.Addr().String()), time.Second)
				if tc.ok && err != nil {
					t.Fatalf("dial with the secret: %v", err)
				}
				if !tc.ok && err == nil {
					t.Fatal("dial with another secret succeeded")
				}
				if c != nil {
					defer c.Close()
				}
			}
			if tc.ok {
				select {
				case c := <-accepted:
					c.Close()
				case <-time.After(5 * time.Second):
					t.Fatal("the authenticated connection was not accepted")
				}
				if n := testutil.ToFloat64(srv.m.refused); n != 0 {
					t.Fatalf("refused %v connections, want 0", n)
				}
				return
			}
			counter, other := srv.m.handshakeFailures, srv.m.refused
			if tc.refused {
				counter, other = other, counter
			}
			deadline := time.Now().Add(10 * time.Second)
			for testutil.ToFloat64(counter) != 1 {
				if time.Now().After(deadline) {
					t.Fatalf("counted %v connections (refused %v, closed during the handshake %v), want 1",
						testutil.ToFloat64(counter), testutil.ToFloat64(srv.m.refused), testutil.ToFloat64(srv.m.handshakeFailures))
				}
				time.Sleep(5 * time.Millisecond)
			}
			if n := testutil.ToFloat64(other); n != 0 {
				t.Fatalf("also counted %v in the other counter (refused %v)", n, tc.refused)
			}
			select {
			case <-accepted:
				t.Fatal("an unauthenticated connection reached raft")
			default:
			}
		})
	}
}
