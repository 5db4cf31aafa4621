package main

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpProxy sits in front of one replica's raft address: every other member
// dials the proxy, which forwards to the replica. The replication tests
// use it to make partitions and slow links without privileges. Its faults:
//
//   - pass: bytes flow both ways;
//   - delay: every chunk is held for the delay before it is forwarded, in
//     order (a slow link);
//   - drop: connections stay open but every byte read is thrown away (a
//     partition TCP does not notice: the peer sees a silent member);
//   - cut: open connections are closed, new ones closed as soon as they
//     are accepted (the member is unreachable, and a peer knows it).
//
// Faults change at once for connections already open.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  proxyMode             // guarded by mu
	delay time.Duration         // guarded by mu
	conns map[net.Conn]struct{} // guarded by mu: both ends of every pipe
	wg    sync.WaitGroup        // the accept loop and every pipe
	done  chan struct{}         // closed by close
	stats struct{ dropped, cut atomic.Int64 }
}

type proxyMode int

const (
	proxyPass proxyMode = iota
	proxyDrop
	proxyCut
)

func (m proxyMode) String() string {
	switch m {
	case proxyPass:
		return "pass"
	case proxyDrop:
		return "drop"
	case proxyCut:
		return "cut"
	}
	return "?"
}

// newTCPProxy listens on listen (127.0.0.1:0 for any port) and forwards
// to target; it is closed when tb ends.
func newTCPProxy(tb testing.TB, listen, target string) *tcpProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		tb.Fatalf("proxy listen on %s: %v", listen, err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

// set changes the proxy's fault; delay applies in pass mode only.
func (p *tcpProxy) set(mode proxyMode, delay time.Duration) {
	p.mu.Lock()
	p.mode, p.delay = mode, delay
	var cut []net.Conn
	if mode == proxyCut {
		for c := range p.conns {
			cut = append(cut, c)
		}
	}
	p.mu.Unlock()
	for _, c := range cut {
		c.Close()
		p.stats.cut.Add(1)
	}
}

func (p *tcpProxy) state() (proxyMode, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.delay
}

func (p *tcpProxy) close() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *tcpProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if mode, _ := p.state(); mode == proxyCut {
			in.Close()
			p.stats.cut.Add(1)
			continue
		}
		p.wg.Add(1)
		go p.serve(in)
	}
}

func (p *tcpProxy) serve(in net.Conn) {
	defer p.wg.Done()
	out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		in.Close() // the target is down: the dialer sees its connection closed
		return
	}
	if !p.track(in) || !p.track(out) {
		in.Close()
		out.Close()
		return
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); p.pipe(out, in) }()
	go func() { defer pipes.Done(); p.pipe(in, out) }()
	pipes.Wait()
	p.untrack(in)
	p.untrack(out)
}

// chunk is bytes read at a time, to be written once due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst under the proxy's fault, until either side
// closes; then it closes both, so the other direction ends too.
func (p *tcpProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	queue := make(chan chunk, 256)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for c := range queue {
			if wait := time.Until(c.due); wait > 0 {
				select {
				case <-time.After(wait):
				case <-p.done:
					src.Close()
					for range queue { // until the reader sees its close
					}
					return
				}
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close() // stop the reader too
				for range queue {
				}
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			mode, delay := p.state()
			switch mode {
			case proxyDrop:
				p.stats.dropped.Add(int64(n))
			case proxyCut:
				// set closed this connection; what was read loses the race.
			default:
				queue <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(delay)}
			}
		}
		if err != nil { // EOF, a reset or a close: the pipe ends either way
			close(queue)
			<-writerDone
			return
		}
	}
}

// TestTCPProxy checks the proxy's faults against an echo server, so that
// a replication test's partition is the one it asked for.
func TestTCPProxy(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	p := newTCPProxy(t, "127.0.0.1:0", echo.Addr().String())

	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", p.addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	roundTrip := func(c net.Conn, msg string) (string, error) {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(c, buf)
		return string(buf), err
	}

	c := dial()
	if got, err := roundTrip(c, "hello"); err != nil || got != "hello" {
		t.Fatalf("pass: got %q, %v; want hello", got, err)
	}

	// drop: what is written while dropping never arrives; what is written
	// after is the first thing read back.
	p.set(proxyDrop, 0)
	if _, err := c.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	// The proxy has read it once it counts it as dropped.
	deadline := time.Now().Add(5 * time.Second)
	for p.stats.dropped.Load() < int64(len("lost")) {
		if time.Now().After(deadline) {
			t.Fatalf("drop: the proxy did not read the bytes written (dropped %d)", p.stats.dropped.Load())
		}
		time.Sleep(time.Millisecond)
	}
	p.set(proxyPass, 0)
	if got, err := roundTrip(c, "kept"); err != nil || got != "kept" {
		t.Fatalf("after drop: got %q, %v; want kept (the dropped bytes must not arrive)", got, err)
	}

	// delay: an echo goes through the proxy twice.
	const delay = 150 * time.Millisecond
	p.set(proxyPass, delay)
	began := time.Now()
	if got, err := roundTrip(c, "slow"); err != nil || got != "slow" {
		t.Fatalf("delay: got %q, %v", got, err)
	}
	if took := time.Since(began); took < 2*delay {
		t.Fatalf("delay %s: an echo took %s, want at least %s", delay, took, 2*delay)
	}
	p.set(proxyPass, 0)

	// cut: the open connection ends, and a new one is closed at once.
	p.set(proxyCut, 0)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("cut: the open connection read %d bytes, %v; want it closed", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("cut: the open connection is still open: %v", err)
	}
	c2 := dial()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Logf("cut: a write to a new connection: %v", err) // closed already: what the read below checks
	}
	if n, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatalf("cut: a new connection read %d bytes; want it closed", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("cut: a new connection is still open: %v", err)
	}

	// Back to pass: a new connection works again.
	p.set(proxyPass, 0)
	if got, err := roundTrip(dial(), "again"); err != nil || got != "again" {
		t.Fatalf("pass after cut: got %q, %v", got, err)
	}
}
