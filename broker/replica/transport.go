package replica

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Raft connections prove the shared secret before raft sees a byte: the
// accepting side sends a random challenge, the dialling side answers with
// its own challenge and HMAC-SHA256(secret, "dial" | both), and the
// accepting side proves itself with HMAC-SHA256(secret, "accept" | both).
// A connection that fails is closed, logged and counted. The secret
// authenticates; it does not encrypt (raft's traffic stays in clear: run
// the group on a private network, or behind a TLS tunnel).
const (
	nonceLen         = 32
	handshakeTimeout = 5 * time.Second
)

// errWrongProof: the other side answered the challenge, wrongly: it does
// not hold the secret.
var errWrongProof = errors.New("wrong proof of the shared secret")

// MinSecretLen is the shortest raft secret accepted.
const MinSecretLen = 32

type authLayer struct {
	ln     net.Listener
	adv    net.Addr
	secret []byte
	logger *slog.Logger
	m      *metrics
	conns  chan net.Conn
	done   chan struct{}
	once   sync.Once
}

func newTransport(bind, advertise string, secret []byte, hl hclog.Logger, logger *slog.Logger, m *metrics) (*raft.NetworkTransport, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("replica: listen for raft on %s: %w", bind, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("replica: raft address %s: %w", advertise, err)
	}
	if adv.IP == nil || adv.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("replica: raft address %s is not one others can dial", advertise)
	}
	l := &authLayer{ln: ln, adv: adv, secret: secret, logger: logger, m: m, conns: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: l, MaxPool: 3, Timeout: 10 * time.Second, Logger: hl}), nil
}

func (l *authLayer) acceptLoop() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			l.logger.Warn("raft accept failed", slog.Any("err", err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			if err := l.serverHandshake(c); err != nil {
				_ = c.Close()
				if errors.Is(err, errWrongProof) {
					l.m.refused.Inc()
					l.logger.Error("raft connection refused: it did not prove the shared secret", slog.String("remote", c.RemoteAddr().String()), slog.Any("err", err))
					return
				}
				// Gone before it answered (a peer restarting, a network
				// cut): no proof either way.
				l.m.handshakeFailures.Inc()
				l.logger.Warn("raft connection closed during its handshake", slog.String("remote", c.RemoteAddr().String()), slog.Any("err", err))
				return
			}
			select {
			case l.conns <- c:
			case <-l.done:
				_ = c.Close()
			}
		}()
	}
}

func mac(secret []byte, role string, a, b []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(role))
	h.Write(a)
	h.Write(b)
	return h.Sum(nil)
}

func (l *authLayer) serverHandshake(c net.Conn) error {
	if len(l.secret) == 0 {
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	ns := make([]byte, nonceLen)
	if _, err := rand.Read(ns); err != nil {
		return err
	}
	if _, err := c.Write(ns); err != nil {
		return err
	}
	in := make([]byte, nonceLen+sha256.Size)
	if _, err := io.ReadFull(c, in); err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	nc := in[:nonceLen]
	if !hmac.Equal(in[nonceLen:], mac(l.secret, "dial", ns, nc)) {
		return errWrongProof
	}
	_, err := c.Write(mac(l.secret, "accept", ns, nc))
	return err
}

func (l *authLayer) clientHandshake(c net.Conn) error {
	if len(l.secret) == 0 {
		return nil
	}
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	ns := make([]byte, nonceLen)
	if _, err := io.ReadFull(c, ns); err != nil {
		return fmt.Errorf("read the challenge: %w", err)
	}
	nc := make([]byte, nonceLen)
	if _, err := rand.Read(nc); err != nil {
		return err
	}
	if _, err := c.Write(append(bytes.Clone(nc), mac(l.secret, "dial", ns, nc)...)); err != nil {
		return err
	}
	proof := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, proof); err != nil {
		return fmt.Errorf("read the proof (the other side may hold another secret): %w", err)
	}
	if !hmac.Equal(proof, mac(l.secret, "accept", ns, nc)) {
		return fmt.Errorf("the member dialled: %w", errWrongProof)
	}
	return nil
}

func (l *authLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *authLayer) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.ln.Close()
}

func (l *authLayer) Addr() net.Addr { return l.adv }

func (l *authLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, err
	}
	if err := l.clientHandshake(c); err != nil {
		_ = c.Close()
		if errors.Is(err, errWrongProof) {
			l.m.refused.Inc()
			l.logger.Error("raft connection to a member refused: it did not prove the shared secret", slog.String("addr", string(address)), slog.Any("err", err))
		} else {
			// It closed before proving anything: most often it refused
			// this member's proof (another secret), or it is going away.
			l.m.handshakeFailures.Inc()
			l.logger.Warn("raft connection to a member closed during its handshake (a member with another --raft-secret closes so)", slog.String("addr", string(address)), slog.Any("err", err))
		}
		return nil, fmt.Errorf("raft handshake with %s: %w", address, err)
	}
	return c, nil
}

// hclogWriter turns hclog's lines into slog records at their level.
type hclogWriter struct{ l *slog.Logger }

func (w hclogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	w.l.Log(context.Background(), level, line)
	return len(p), nil
}

func newHCLogger(l *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "raft", Output: hclogWriter{l}, Level: hclog.Info, DisableTime: true})
}
