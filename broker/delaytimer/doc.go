// Package delaytimer is the broker's delay timer: it puts delayed messages
// on their queues when they fall due, and moves those still waiting ahead
// of the log segments retention deletes. It holds no message and no timer
// of its own: timers live in the metadata store (Store), one row per
// delayed record of the commitlog (log offset, due time), and what needs
// the log and the topics, putting a message back or copying it ahead, is
// the broker's (Host).
//
// # What it guarantees
//
//   - A due timer is marked fired only after Host.PutBack returned, so a
//     message is put on its queue at least once. A crash between the two
//     puts it back again on the next start; the broker's PutBack looks for
//     a put-back copy already in the log to make that rare.
//   - A waiting message moved ahead of retention keeps exactly one pending
//     timer: Host.Move stores the copies and their timers before the
//     originals' timers are marked fired.
//   - Firing and moving take turns. A move that read a timer before it
//     fired would otherwise copy a message already put on its queue, and
//     the copy's own timer would put it there a second time.
//   - Firing is driven by the due times in the store, read again after
//     every round: the loop sleeps until the earliest one, at most MaxWait
//     (so a clock stepped forward is noticed), or until Wake says a new
//     timer may be due sooner.
package delaytimer
