package broker

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/postbus/postbus/broker/internal/durable"
	"github.com/postbus/postbus/broker/internal/vfs"
)

// A receipt names one delivery of a pulled message: the group it was
// handed to, the attempt, and the log offset of the timer copy that brings
// it back when its visibility runs out. Acking cancels that timer. It is
// MAC'd with the broker's receipt key, so a receipt cannot be forged or
// turned into another group's, and it goes stale once its timer fired (the
// message was handed out again, under a new receipt).
//
// An ordered group's receipt names instead the queue and offset of the one
// message its queue has out, and when its visibility ends, which ack and
// nack check against the queue's stored block (a nacked block waits until
// another time, so its receipt is stale even after a restart); a push
// lease's names the lease, held in memory.
//
//	version u8 (2) | kind u8 (0 timer, 1 ordered, 2 push, 3 ordered with
//	deadline, 4 ack token) | attempt u16 | timer offset, or queue offset
//	when ordered, or ack key of an ack token, i64 | queue u16 | group u8+bytes | topic u8+bytes | msg id u8+bytes |
//	kind 3 only: deadline, Unix ms, i64 | HMAC-SHA256 truncated to 16 bytes
//
// encoded base64url without padding. In a cluster a pulled message's
// receipt is handed out as <broker name>~<receipt>, so that any broker can
// route it back; the MAC covers that name too (the HMAC of the name, a 0
// byte and the bytes above), so a receipt given another broker's name, or
// none, is not one this bus issued (`zz~<receipt>` used to be acked). A
// push lease's receipt never leaves the process and has no name.
//
// Version 1 receipts, issued before the name was covered, MAC the bytes
// alone; they are still taken, for what is out across an upgrade, but
// only under this broker's own name or none.
//
// Kind 1 (without the deadline) was issued before kind 3; it is still
// taken, checked against the block in memory only.
type receipt struct {
	Kind    receiptKind
	Attempt int
	Timer   int64 // log offset of the visibility copy; the queue offset when ordered
	Queue   int   // ordered: the queue
	Group   string
	Topic   string
	MsgID   string
	Until   int64 // receiptOrderedUntil: the visibility's end, Unix ms
}

// receiptKind is what a receipt names.
type receiptKind uint8

const (
	receiptTimer        receiptKind = iota // a pull lease: its visibility timer
	receiptOrdered                         // an ordered pull lease: its queue's block
	receiptPush                            // a push lease, held in this process: its id
	receiptOrderedUntil                    // an ordered pull lease: its queue's block and its visibility's end
	receiptDeferred                        // a push delivery's ack token: Timer is its ack key (deferred.go)
)

const (
	receiptVersion = 2
	// receiptVersionUnnamed receipts' MAC leaves out the broker name.
	receiptVersionUnnamed = 1
	receiptMACLen         = 16
	// MaxReceiptLen bounds a receipt's text, so a bad one is refused before
	// any work.
	MaxReceiptLen = 512
)

var errBadReceipt = errors.New("malformed receipt")

// loadReceiptKey reads the receipt key from the data directory, creating
// it on first start.
func loadReceiptKey(fsys vfs.FS, dir string) ([]byte, error) {
	path := dir + "/receipt.key"
	key, err := os.ReadFile(path)
	if err == nil {
		if len(key) != 32 {
			return nil, fmt.Errorf("receipt key %s: %d bytes, want 32", path, len(key))
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read receipt key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := durable.WriteFile(fsys, path, key, 0o600); err != nil {
		return nil, fmt.Errorf("create receipt key: %w", err)
	}
	return key, nil
}

// receiptSep separates a receipt from the name of the broker that issued
// it (see receipt). Neither broker names nor base64url use it.
const receiptSep = "~"

// encode is the receipt's text as issued by the broker named issuer ("":
// no name, a standalone broker's or a push lease's); the caller puts the
// name before it.
func (r receipt) encode(key []byte, issuer string) string {
	return r.encodeVersion(key, issuer, receiptVersion)
}

func (r receipt) encodeVersion(key []byte, issuer string, version byte) string {
	buf := make([]byte, 0, 16+len(r.Group)+len(r.MsgID)+receiptMACLen)
	buf = append(buf, version, byte(r.Kind))
	buf = binary.BigEndian.AppendUint16(buf, uint16(r.Attempt))
	buf = binary.BigEndian.AppendUint64(buf, uint64(r.Timer))
	buf = binary.BigEndian.AppendUint16(buf, uint16(r.Queue))
	buf = append(buf, byte(len(r.Group)))
	buf = append(buf, r.Group...)
	buf = append(buf, byte(len(r.Topic)))
	buf = append(buf, r.Topic...)
	buf = append(buf, byte(len(r.MsgID)))
	buf = append(buf, r.MsgID...)
	if r.Kind == receiptOrderedUntil {
		buf = binary.BigEndian.AppendUint64(buf, uint64(r.Until))
	}
	name := issuer
	if version == receiptVersionUnnamed {
		name = ""
	}
	buf = receiptMAC(key, version == receiptVersion, name, buf, buf)[:len(buf)+receiptMACLen]
	return base64.RawURLEncoding.EncodeToString(buf)
}

// macPool holds HMAC states keyed with one receipt key.
type macPool struct {
	key  []byte
	pool sync.Pool
}

// receiptMACs is the pool of the receipt key last used. Every push
// delivery makes a receipt and checks one: a pooled state, reset to the
// key, spares each a new HMAC (two SHA-256 states and the key's two
// blocks). A process has one broker, so one key; another key (tests open
// many brokers) replaces the pool, and a call keeps the pool it took.
var receiptMACs atomic.Pointer[macPool]

// receiptMAC appends the HMAC-SHA256 under key of body to dst, and when
// named, of the issuer's name and a 0 byte before it.
func receiptMAC(key []byte, named bool, issuer string, body, dst []byte) []byte {
	p := receiptMACs.Load()
	if p == nil || !bytes.Equal(p.key, key) {
		p = &macPool{key: bytes.Clone(key)}
		p.pool.New = func() any { return hmac.New(sha256.New, p.key) }
		receiptMACs.Store(p)
	}
	h := p.pool.Get().(hash.Hash)
	h.Reset()
	if named {
		var nb [256]byte // broker names are short; a longer one is no broker's
		h.Write(append(append(nb[:0], issuer...), 0))
	}
	h.Write(body)
	dst = h.Sum(dst)
	p.pool.Put(h)
	return dst
}

// decodeReceipt checks a receipt's MAC, the name of the broker before it
// included, and reads it. self is this broker's name now: the only name a
// version 1 receipt, whose MAC leaves the name out, may carry.
func decodeReceipt(s string, key []byte, self string) (receipt, error) {
	issuer, local, named := strings.Cut(s, receiptSep)
	if !named {
		issuer, local = "", s
	}
	rc, body, sum, err := parseReceipt(local)
	if err != nil {
		return receipt{}, err
	}
	current := body[0] == receiptVersion
	if !current && issuer != "" && issuer != self {
		return receipt{}, errBadReceipt
	}
	var mac [sha256.Size]byte
	if !hmac.Equal(receiptMAC(key, current, issuer, body, mac[:0])[:receiptMACLen], sum) {
		return receipt{}, errBadReceipt
	}
	return rc, nil
}

// parseReceipt reads a receipt's fields, and returns the bytes its MAC
// covers and the MAC, unchecked.
func parseReceipt(s string) (rc receipt, body, sum []byte, err error) {
	// The decoder skips '\r' and '\n'; a receipt with them in it is not
	// one this bus handed out, and must not pass for the one without.
	if len(s) > MaxReceiptLen || strings.ContainsAny(s, "\r\n") {
		return receipt{}, nil, nil, errBadReceipt
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 2+2+8+2+1+1+1+receiptMACLen || (b[0] != receiptVersion && b[0] != receiptVersionUnnamed) || b[1] > byte(receiptDeferred) {
		return receipt{}, nil, nil, errBadReceipt
	}
	body, sum = b[:len(b)-receiptMACLen], b[len(b)-receiptMACLen:]
	r := recordReader{p: body[2:]}
	rc = receipt{Kind: receiptKind(body[1])}
	if a := r.take(2); a != nil {
		rc.Attempt = int(binary.BigEndian.Uint16(a))
	}
	if t := r.take(8); t != nil {
		rc.Timer = int64(binary.BigEndian.Uint64(t))
	}
	rc.Queue = r.u16()
	rc.Group = string(r.str8())
	rc.Topic = string(r.str8())
	rc.MsgID = string(r.str8())
	if rc.Kind == receiptOrderedUntil {
		if u := r.take(8); u != nil {
			rc.Until = int64(binary.BigEndian.Uint64(u))
		}
	}
	if r.err != nil || len(r.p) != 0 || rc.Timer < 0 {
		return receipt{}, nil, nil, errBadReceipt
	}
	return rc, body, sum, nil
}

// CheckReceiptForm checks that s has the form of a receipt a broker of
// this bus issued to group, without its MAC, which only the issuing
// broker's key can check: a receipt to be sent to another broker is
// checked here first, so that garbage is refused as this bus refuses a
// forged receipt (400 invalid_receipt, nothing changed), not sent on, nor
// taken for a receipt of a broker that is away. field names it in the
// error.
func CheckReceiptForm(group, s, field string) error {
	rc, _, _, err := parseReceipt(s)
	switch {
	case err != nil:
		return errf(CodeInvalidReceipt, field, "not a receipt this bus issued")
	case rc.Group != group:
		return errf(CodeInvalidReceipt, field, "the receipt was issued to another group")
	}
	return nil
}

// CheckReceipt reports whether this broker issued s to group, its MAC and
// the broker name before it checked, without settling anything: a request
// whose receipts go to several brokers checks first the ones settled
// here, so that one this broker did not issue fails the request before
// any broker settles its share. field names it in the error.
func (b *Broker) CheckReceipt(group, s, field string) error {
	r, err := decodeReceipt(s, b.receiptKey, b.nodeName())
	switch {
	case err != nil:
		return errf(CodeInvalidReceipt, field, "not a receipt this bus issued")
	case r.Group != group:
		return errf(CodeInvalidReceipt, field, "the receipt was issued to another group")
	}
	return nil
}

// InstanceID names this broker's data for the name servers: the same data
// restarted on another address has the same one, another broker's data
// (one started with the same --broker-name by mistake) another. It is a
// hash of the receipt key, which lives in the data directory, and says
// nothing about the key.
func (b *Broker) InstanceID() string {
	sum := sha256.Sum256(append([]byte("postbus instance\x00"), b.receiptKey...))
	return hex.EncodeToString(sum[:12])
}
