//go:build !unix

package httpapi

import "net"

// canPeek: without a way to peek at a socket, held polls are not parked
// (parked.go).
const canPeek = false

func peekable(net.Conn) bool { return false }

func peekAlive(net.Conn) (alive, known bool) { return true, false }
