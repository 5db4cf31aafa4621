package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/postbus/postbus/broker/commitlog"
)

// Query limits.
const (
	DefaultQueryLimit = 32
	MaxQueryLimit     = 256
)

var msgIDRE = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)

// ValidMessageID reports whether id has the form of a message id.
func ValidMessageID(id string) bool { return msgIDRE.MatchString(id) }

// lookup visits the stored messages whose index hash is h, newest first,
// until fn returns false. Candidates are decoded in full so fn can check
// that the message really matches (hashes may collide). A candidate whose
// record is damaged (quarantined by the log) or undecodable is skipped,
// logged and counted in damaged: one bad record must not fail the
// lookups of every other message.
func (b *Broker) lookup(ctx context.Context, h uint64, fn func(*Message) bool) (damaged int, err error) {
	var buf []byte
	var ferr error
	err = b.idx.Lookup(h, func(off int64) bool {
		if ctx.Err() != nil {
			ferr = ctx.Err()
			return false
		}
		rec, _, err := b.log.ReadAt(off, buf[:0])
		if errors.Is(err, commitlog.ErrOutOfRange) {
			return true // removed by retention
		}
		if errors.Is(err, commitlog.ErrCorrupt) {
			b.logger.Error("indexed record is damaged; skipped", slog.Int64("offset", off), slog.Any("err", err))
			damaged++
			return true
		}
		if err != nil {
			ferr = fmt.Errorf("read record at %d: %w", off, err)
			return false
		}
		buf = rec
		m := new(Message)
		if err := decodeRecord(rec, m); err != nil {
			b.logger.Error("undecodable record in index", slog.Int64("offset", off), slog.Any("err", err))
			damaged++
			return true
		}
		m.Body = append([]byte(nil), m.Body...)
		m.LogOffset = off
		return fn(m)
	})
	if err != nil {
		return damaged, fmt.Errorf("key index lookup: %w", err)
	}
	return damaged, ferr
}

// Message returns the stored message with the given id.
func (b *Broker) Message(ctx context.Context, id string) (*Message, error) {
	if !msgIDRE.MatchString(id) {
		return nil, errf(CodeInvalidMessageID, "msg_id", "%q is not a message id (1-64 letters and digits)", id)
	}
	// A publish is acknowledged before dispatch indexes it: make a lookup
	// right after the acknowledgement see it.
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, err
	}
	now := b.now()
	var found *Message
	damaged, err := b.lookup(ctx, hashKey(keyID, id), func(m *Message) bool {
		// Retry and dead-letter copies share the id; the message is the
		// one on its own topic (the newest: a delayed message's re-put).
		if m.ID != id || m.flags&(flagRetry|flagDead) != 0 {
			return true
		}
		if b.topicAlive(m, now) {
			found = m
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	if found == nil && damaged > 0 {
		// Maybe this message's record, maybe another whose hash collides:
		// either way not a plain "no such message".
		return nil, &Error{Code: CodeMessageDamaged, Field: "msg_id", Detail: fmt.Sprintf("no readable message with id %q: a damaged record in the log that may be it was quarantined", id)}
	}
	if found == nil {
		return nil, &Error{Code: CodeMessageNotFound, Field: "msg_id", Err: ErrMessageNotFound, Detail: fmt.Sprintf("no message with id %q (it may have expired)", id)}
	}
	return found, nil
}

// MessagesByKey returns the topic's messages with key, newest first, at
// most limit, starting below the log offset `before` (0: from the newest).
// next is the cursor for the following page, or 0 at the end.
func (b *Broker) MessagesByKey(ctx context.Context, topic, key string, before int64, limit int) (msgs []*Message, next int64, err error) {
	if _, err := b.topicState(topic); err != nil {
		return nil, 0, err
	}
	if key == "" || len(key) > MaxKeyLen {
		return nil, 0, errf(CodeInvalidKey, "key", "the key must be 1-%d bytes", MaxKeyLen)
	}
	if limit <= 0 {
		limit = DefaultQueryLimit
	}
	limit = min(limit, MaxQueryLimit)
	if err := b.waitDispatched(ctx, b.log.Committed()); err != nil {
		return nil, 0, err
	}
	now := b.now()
	var newestErr error
	_, err = b.lookup(ctx, hashKey(keyKey, topic+"\x00"+key), func(m *Message) bool {
		if before > 0 && m.LogOffset >= before {
			return true
		}
		// A prepared message's keys are not indexed (dispatch indexes its
		// id only); a hash collision must not show one either.
		if m.Topic != topic || m.Prepared() || !hasKey(m.Keys, key) || !b.topicAlive(m, now) {
			return true
		}
		if m.flags&flagDelayed != 0 {
			// A delayed message has more records with its id and keys: the
			// one that waited, the one put on its queue when due (and one
			// moved ahead of retention). It is listed once, as by id.
			newest, err := b.isNewestCopy(ctx, m)
			if err != nil {
				newestErr = fmt.Errorf("look up the newest copy of %s: %w", m.ID, err)
				return false
			}
			if !newest {
				return true
			}
		}
		if len(msgs) == limit {
			next = msgs[len(msgs)-1].LogOffset
			return false
		}
		msgs = append(msgs, m)
		return true
	})
	if err == nil {
		err = newestErr
	}
	return msgs, next, err
}

// isNewestCopy reports whether m is the record a query by its id answers:
// the newest record with its id on its own topic.
func (b *Broker) isNewestCopy(ctx context.Context, m *Message) (bool, error) {
	newest := int64(-1)
	_, err := b.lookup(ctx, hashKey(keyID, m.ID), func(c *Message) bool {
		if c.ID != m.ID || c.flags&(flagRetry|flagDead) != 0 {
			return true
		}
		newest = c.LogOffset
		return false
	})
	if err != nil {
		return false, err
	}
	return newest < 0 || newest == m.LogOffset, nil
}

func hasKey(keys []string, key string) bool {
	for _, k := range keys {
		if k == key {
			return true
		}
	}
	return false
}
