//go:build unix

package httpapi

import (
	"errors"
	"net"
	"syscall"
)

// canPeek: parked polls are checked for a client gone by peeking at their
// sockets (parked.go).
const canPeek = true

// rawConn returns the socket under conn (a TLS connection's too).
func rawConn(conn net.Conn) (syscall.RawConn, bool) {
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = nc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, false
	}
	rc, err := sc.SyscallConn()
	return rc, err == nil
}

// peekable reports whether peekAlive can tell about conn.
func peekable(conn net.Conn) bool {
	_, ok := rawConn(conn)
	return ok
}

// peekAlive reports whether conn's client is still there: a peek that
// finds the end of the stream or an error says it is gone; bytes waiting,
// or none yet, say it is not. known is false when it cannot tell.
func peekAlive(conn net.Conn) (alive, known bool) {
	rc, ok := rawConn(conn)
	if !ok {
		return true, false
	}
	var n int
	var rerr error
	var b [1]byte
	err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait: a look, not a read
	})
	switch {
	case err != nil:
		return false, true
	case errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK) || errors.Is(rerr, syscall.EINTR):
		return true, true
	case rerr != nil:
		return false, true
	}
	return n > 0, true
}
