package meta

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Transaction states, as stored.
const (
	TxnPrepared   = "prepared"
	TxnCommitted  = "committed"
	TxnRolledBack = "rolled_back"
)

// Txn is a transactional message's row: where its prepared record is, and
// what was decided.
type Txn struct {
	MsgID         string
	Topic         string
	ProducerGroup string
	LogOffset     int64 // the prepared record
	State         string
	PreparedAt    time.Time
	NextCheck     time.Time // when the check-back loop asks next
	Checks        int       // how many checks were made
	QueueID       int       // commit: where it was stored (-1 before)
	QueueOffset   int64
	DecidedAt     time.Time // zero while prepared
	Reason        string    // why it was decided as it was (a check, the maximum of checks, ...)
}

const txnColumns = `msg_id, topic, producer_group, log_offset, state, prepared_at, next_check, checks, queue_id, queue_offset, decided_at, reason`

func scanTxn(row rowScanner) (Txn, error) {
	var t Txn
	var prep, next, decided int64
	err := row.Scan(&t.MsgID, &t.Topic, &t.ProducerGroup, &t.LogOffset, &t.State, &prep, &next, &t.Checks,
		&t.QueueID, &t.QueueOffset, &decided, &t.Reason)
	if err != nil {
		return Txn{}, err
	}
	t.PreparedAt, t.NextCheck = fromMillis(prep), fromMillis(next)
	if decided != 0 {
		t.DecidedAt = fromMillis(decided)
	}
	return t, nil
}

// AddTxns records prepared messages met by dispatch, and then the
// decisions it met in the log (commits, and rollbacks' records): a row
// still prepared takes the decision's state. A row already there (dispatch
// replays the log after a crash) is left as it is, decided or not, and so
// is a decided one a decision names.
func (s *Store) AddTxns(ctx context.Context, ts []Txn, commits []TxnDecision) error {
	if len(ts) == 0 && len(commits) == 0 {
		return nil
	}
	for _, t := range ts {
		if t.MsgID == "" || t.LogOffset < 0 {
			return fmt.Errorf("add transactions: id %q at offset %d: %w", t.MsgID, t.LogOffset, ErrInvalid)
		}
	}
	return s.write(ctx, func(tx Tx) error {
		for rest := ts; len(rest) > 0; {
			n := min(len(rest), rowChunk)
			args := make([]any, 0, 6*n)
			for _, t := range rest[:n] {
				args = append(args, t.MsgID, t.Topic, t.ProducerGroup, t.LogOffset, t.PreparedAt.UnixMilli(), t.NextCheck.UnixMilli())
			}
			q := `INSERT INTO transactions (msg_id, topic, producer_group, log_offset, prepared_at, next_check) VALUES ` +
				placeholders(n, 6) + ` ON CONFLICT (msg_id) DO NOTHING`
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("add transactions: %w", err)
			}
			rest = rest[n:]
		}
		if len(commits) == 0 {
			return nil
		}
		st, err := tx.PrepareContext(ctx, `UPDATE transactions SET state = ?, queue_id = ?, queue_offset = ?, decided_at = ?, reason = ?
			WHERE msg_id = ? AND state = 'prepared'`)
		if err != nil {
			return fmt.Errorf("mark commits: %w", err)
		}
		defer st.Close()
		for _, c := range commits {
			if c.State != TxnCommitted && c.State != TxnRolledBack {
				return fmt.Errorf("mark decision of %s: state %q: %w", c.MsgID, c.State, ErrInvalid)
			}
			if _, err := st.ExecContext(ctx, c.State, c.QueueID, c.QueueOffset, s.stamp(c.At).UnixMilli(), c.Reason, c.MsgID); err != nil {
				return fmt.Errorf("mark commit of %s: %w", c.MsgID, err)
			}
		}
		return nil
	})
}

// Txn returns a transaction's row, or ErrNotFound.
func (s *Store) Txn(ctx context.Context, msgID string) (Txn, error) {
	s.txnByIDOnce.Do(func() {
		s.txnByID, s.txnByIDErr = s.r.PrepareContext(context.WithoutCancel(ctx), `SELECT `+txnColumns+` FROM transactions WHERE msg_id = ?`)
	})
	if s.txnByIDErr != nil {
		return Txn{}, s.note(fmt.Errorf("transaction %s: prepare its read: %w", msgID, s.txnByIDErr))
	}
	if s.txnByID == nil {
		return Txn{}, fmt.Errorf("transaction %s: %w", msgID, sql.ErrConnDone) // closed
	}
	t, err := scanTxn(s.txnByID.QueryRowContext(ctx, msgID))
	if errors.Is(err, sql.ErrNoRows) {
		return Txn{}, fmt.Errorf("transaction %s: %w", msgID, ErrNotFound)
	}
	if err != nil {
		return Txn{}, s.note(fmt.Errorf("transaction %s: %w", msgID, err))
	}
	return t, nil
}

// ErrDecided: DecideTxns found the transaction decided already; the row
// returned with it says how.
var ErrDecided = errors.New("transaction already decided")

// TxnDecision moves a prepared transaction to State (committed, with the
// queue and offset its message was stored at, or rolled back) with its
// reason.
type TxnDecision struct {
	MsgID       string
	State       string
	QueueID     int
	QueueOffset int64
	At          time.Time
	Reason      string
}

// TxnDecided is one decision's outcome: the row as it is now, and Err:
// nil when this decision took effect, ErrDecided when the transaction was
// decided already (Txn says how), ErrNotFound for an unknown one.
type TxnDecided struct {
	Txn Txn
	Err error
}

// DecideTxns applies decisions in one write (decisions of concurrent
// callers share its fsync, as publishes share the log's), each as
// TxnDecided says. The error is the write's: then none took effect.
func (s *Store) DecideTxns(ctx context.Context, ds []TxnDecision) ([]TxnDecided, error) {
	for _, d := range ds {
		if d.State != TxnCommitted && d.State != TxnRolledBack {
			return nil, fmt.Errorf("decide transaction %s: state %q: %w", d.MsgID, d.State, ErrInvalid)
		}
	}
	out := make([]TxnDecided, len(ds))
	err := s.write(ctx, func(tx Tx) error {
		for i, d := range ds {
			t, err := scanTxn(tx.QueryRowContext(ctx, `SELECT `+txnColumns+` FROM transactions WHERE msg_id = ?`, d.MsgID))
			if errors.Is(err, sql.ErrNoRows) {
				out[i] = TxnDecided{Err: fmt.Errorf("transaction %s: %w", d.MsgID, ErrNotFound)}
				continue
			}
			if err != nil {
				return err
			}
			if t.State != TxnPrepared {
				out[i] = TxnDecided{Txn: t, Err: ErrDecided}
				continue
			}
			at := s.stamp(d.At)
			if _, err := tx.ExecContext(ctx, `UPDATE transactions SET state = ?, queue_id = ?, queue_offset = ?, decided_at = ?, reason = ? WHERE msg_id = ?`,
				d.State, d.QueueID, d.QueueOffset, at.UnixMilli(), d.Reason, d.MsgID); err != nil {
				return err
			}
			t.State, t.QueueID, t.QueueOffset, t.DecidedAt, t.Reason = d.State, d.QueueID, d.QueueOffset, at, d.Reason
			out[i] = TxnDecided{Txn: t}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decide transactions: %w", err)
	}
	return out, nil
}

// ClaimDueTxns returns up to limit prepared transactions whose next check
// is due at now, earliest first, and in the same write moves each one's
// next check to now+interval and counts the check, so that a crash with a
// check in flight asks again one interval later, and two loops never ask
// at once. The rows are returned as claimed (Checks counts this one).
func (s *Store) ClaimDueTxns(ctx context.Context, now time.Time, interval time.Duration, limit int) ([]Txn, error) {
	if err := validLimit(limit); err != nil {
		return nil, fmt.Errorf("claim due transactions: %w", err)
	}
	var out []Txn
	err := s.write(ctx, func(tx Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, `SELECT `+txnColumns+` FROM transactions WHERE state = 'prepared' AND next_check <= ? ORDER BY next_check LIMIT ?`,
			now.UnixMilli(), limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			t, err := scanTxn(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, t)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		next := now.Add(interval)
		for i := range out {
			if _, err := tx.ExecContext(ctx, `UPDATE transactions SET next_check = ?, checks = checks + 1 WHERE msg_id = ?`,
				next.UnixMilli(), out[i].MsgID); err != nil {
				return err
			}
			out[i].NextCheck = fromMillis(next.UnixMilli())
			out[i].Checks++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim due transactions: %w", err)
	}
	return out, nil
}

// NextTxnCheck returns when the earliest prepared transaction is due for a
// check.
func (s *Store) NextTxnCheck(ctx context.Context) (time.Time, bool, error) {
	var at sql.NullInt64
	if err := s.r.QueryRowContext(ctx, `SELECT min(next_check) FROM transactions WHERE state = 'prepared'`).Scan(&at); err != nil {
		return time.Time{}, false, s.note(fmt.Errorf("next transaction check: %w", err))
	}
	if !at.Valid {
		return time.Time{}, false, nil
	}
	return fromMillis(at.Int64), true, nil
}

// Txns lists transactions in state (any state when ""), in prepare order,
// starting after the prepared record at log offset after (-1: from the
// first); at most limit.
func (s *Store) Txns(ctx context.Context, state string, after int64, limit int) ([]Txn, error) {
	if err := validLimit(limit); err != nil {
		return nil, fmt.Errorf("transactions: %w", err)
	}
	q := `SELECT ` + txnColumns + ` FROM transactions WHERE log_offset > ?`
	args := []any{after}
	if state != "" {
		q += ` AND state = ?`
		args = append(args, state)
	}
	q += ` ORDER BY log_offset LIMIT ?`
	args = append(args, limit)
	out, err := collect(ctx, s.r, func(r *sql.Rows) (Txn, error) { return scanTxn(r) }, q, args...)
	if err != nil {
		return nil, s.note(fmt.Errorf("transactions: %w", err))
	}
	return out, nil
}

// CountTxns counts the transactions in each state.
func (s *Store) CountTxns(ctx context.Context) (map[string]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT state, count(*) FROM transactions GROUP BY state`)
	if err != nil {
		return nil, s.note(fmt.Errorf("count transactions: %w", err))
	}
	defer rows.Close()
	out := make(map[string]int64)
	for rows.Next() {
		var st string
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, s.note(fmt.Errorf("count transactions: %w", err))
		}
		out[st] = n
	}
	if err := rows.Err(); err != nil {
		return nil, s.note(fmt.Errorf("count transactions: %w", err))
	}
	return out, nil
}

// ProducerGroup is where a producer group's transactions are checked and
// the secrets that sign the checks.
type ProducerGroup struct {
	Name            string
	CheckURL        string
	Secret          string
	PreviousSecrets []PreviousSecret
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

// PreviousSecret is a rotated-out secret still signing until Until.
type PreviousSecret struct {
	Secret string    `json:"secret"`
	Until  time.Time `json:"until"`
}

// PutProducerGroup creates or replaces a producer group; CreatedAt is kept
// from an existing row.
func (s *Store) PutProducerGroup(ctx context.Context, g ProducerGroup) (ProducerGroup, error) {
	if err := validName("producer group", g.Name); err != nil {
		return ProducerGroup{}, err
	}
	if g.PreviousSecrets == nil {
		g.PreviousSecrets = []PreviousSecret{}
	}
	prev, err := json.Marshal(g.PreviousSecrets)
	if err != nil {
		return ProducerGroup{}, fmt.Errorf("put producer group %s: %w", g.Name, err)
	}
	now := s.stamp(g.UpdatedAt)
	err = s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO producer_groups (name, check_url, secret, previous_secrets, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET check_url = excluded.check_url, secret = excluded.secret,
				previous_secrets = excluded.previous_secrets, updated_at = excluded.updated_at`,
			g.Name, g.CheckURL, g.Secret, string(prev), now.UnixMilli(), now.UnixMilli())
		return err
	})
	if err != nil {
		return ProducerGroup{}, fmt.Errorf("put producer group %s: %w", g.Name, err)
	}
	return s.ProducerGroup(ctx, g.Name)
}

// ProducerGroup returns a producer group, or ErrNotFound.
func (s *Store) ProducerGroup(ctx context.Context, name string) (ProducerGroup, error) {
	var g ProducerGroup
	var prev string
	var created, updated int64
	err := s.r.QueryRowContext(ctx, `SELECT name, check_url, secret, previous_secrets, created_at, updated_at FROM producer_groups WHERE name = ?`, name).
		Scan(&g.Name, &g.CheckURL, &g.Secret, &prev, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return ProducerGroup{}, fmt.Errorf("producer group %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return ProducerGroup{}, s.note(fmt.Errorf("producer group %s: %w", name, err))
	}
	if err := json.Unmarshal([]byte(prev), &g.PreviousSecrets); err != nil {
		return ProducerGroup{}, fmt.Errorf("producer group %s: previous secrets: %w", name, err)
	}
	g.CreatedAt, g.UpdatedAt = fromMillis(created), fromMillis(updated)
	return g, nil
}

// ProducerGroups lists every producer group by name.
func (s *Store) ProducerGroups(ctx context.Context) ([]ProducerGroup, error) {
	names, err := collect(ctx, s.r, func(r *sql.Rows) (string, error) {
		var n string
		return n, r.Scan(&n)
	}, `SELECT name FROM producer_groups ORDER BY name`)
	if err != nil {
		return nil, s.note(fmt.Errorf("producer groups: %w", err))
	}
	out := make([]ProducerGroup, 0, len(names))
	for _, n := range names {
		g, err := s.ProducerGroup(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, nil
}

// TxnCheck is one check-back of a transaction, as its trace shows it.
type TxnCheck struct {
	MsgID   string
	Check   int
	At      time.Time
	Outcome string // commit, rollback, unknown, failed
	Status  int
	Error   string
	Latency time.Duration
}

// AddTxnCheck records a check; one recorded under the same number (asked
// again after a crash) is replaced.
func (s *Store) AddTxnCheck(ctx context.Context, c TxnCheck) error {
	return s.write(ctx, func(tx Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO transaction_checks (msg_id, check_n, at, outcome, status, error, latency_us) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (msg_id, check_n) DO UPDATE SET at = excluded.at, outcome = excluded.outcome, status = excluded.status,
				error = excluded.error, latency_us = excluded.latency_us`,
			c.MsgID, c.Check, s.stamp(c.At).UnixMilli(), c.Outcome, c.Status, c.Error, c.Latency.Microseconds())
		if err != nil {
			return fmt.Errorf("add transaction check of %s: %w", c.MsgID, err)
		}
		return nil
	})
}

// TxnChecks returns a transaction's checks in order.
func (s *Store) TxnChecks(ctx context.Context, msgID string) ([]TxnCheck, error) {
	out, err := collect(ctx, s.r, func(r *sql.Rows) (TxnCheck, error) {
		c := TxnCheck{MsgID: msgID}
		var at, lat int64
		err := r.Scan(&c.Check, &at, &c.Outcome, &c.Status, &c.Error, &lat)
		c.At, c.Latency = fromMillis(at), time.Duration(lat)*time.Microsecond
		return c, err
	}, `SELECT check_n, at, outcome, status, error, latency_us FROM transaction_checks WHERE msg_id = ? ORDER BY check_n`, msgID)
	if err != nil {
		return nil, s.note(fmt.Errorf("transaction checks of %s: %w", msgID, err))
	}
	return out, nil
}

// PurgeTxns deletes the transactions decided before before, with their
// checks, and returns how many it deleted. Undecided ones stay whatever
// their age.
func (s *Store) PurgeTxns(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := s.write(ctx, func(tx Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM transaction_checks WHERE msg_id IN
			(SELECT msg_id FROM transactions WHERE state <> 'prepared' AND decided_at < ?)`, before.UnixMilli()); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM transactions WHERE state <> 'prepared' AND decided_at < ?`, before.UnixMilli())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge transactions: %w", err)
	}
	return n, nil
}
