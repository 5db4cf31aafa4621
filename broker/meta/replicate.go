package meta

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"
)

// Tx is what the body of a write transaction uses: a *sql.Tx, or, in a
// replica group, a recorder around one that keeps each statement run.
type Tx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (Prepared, error)
	Rollback() error
}

// Prepared is a statement prepared in a Tx.
type Prepared interface {
	ExecContext(ctx context.Context, args ...any) (sql.Result, error)
	Close() error
}

// plainTx is a Tx on a *sql.Tx alone.
type plainTx struct{ *sql.Tx }

func (t plainTx) PrepareContext(ctx context.Context, query string) (Prepared, error) {
	return t.Tx.PrepareContext(ctx, query)
}

// Stmt is one statement a write transaction ran, with its arguments as
// driver values (int64, float64, bool, []byte, string, time.Time or nil).
type Stmt struct {
	Query string
	Args  []any
}

// Replicator carries the effects of a write to every member of a replica
// group (package broker/replica). ReplicateMeta returns once stmts are
// committed by a majority and applied to this store by ApplyReplicated;
// an error leaves the outcome unknown unless it wraps ErrNotLeader.
type Replicator interface {
	ReplicateMeta(ctx context.Context, stmts []Stmt) error
}

// ErrNotLeader: this store belongs to a replica that is not the leader of
// its group, so it takes no writes of its own.
var ErrNotLeader = errors.New("not the replica group's leader")

// SetReplicator makes every later write go through r: the write's body
// runs in a transaction that is rolled back, and the statements it ran are
// handed to r, which applies them on every member (this one included)
// through ApplyReplicated. Call it before the store is shared.
//
// The statements are the write's effects, not its intent: a body that
// reads the clock or the database decides here, on the leader, and every
// member applies the same statements. They apply to the same state because
// replMu is held from the capture to the apply, and every member's state
// is the same sequence of applied writes.
func (s *Store) SetReplicator(r Replicator) { s.repl = r }

// recorder runs statements in tx and keeps those that succeeded: a failed
// statement changed nothing (SQLite undoes a statement as a whole), and a
// body that goes on after one must not have it fail again elsewhere.
type recorder struct {
	tx    *sql.Tx
	stmts []Stmt
}

func (r *recorder) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	vals := make([]any, len(args))
	for i, a := range args {
		v, err := driver.DefaultParameterConverter.ConvertValue(a)
		if err != nil {
			return nil, fmt.Errorf("replicated statement argument %d: %w", i, err)
		}
		if t, ok := v.(time.Time); ok {
			v = t.UTC() // the same text on every member, whatever its zone
		}
		vals[i] = v
	}
	res, err := r.tx.ExecContext(ctx, query, vals...)
	if err == nil {
		r.stmts = append(r.stmts, Stmt{Query: query, Args: vals})
	}
	return res, err
}

func (r *recorder) PrepareContext(_ context.Context, query string) (Prepared, error) {
	return recPrepared{r: r, query: query}, nil
}

// Rollback undoes what the body ran so far: nothing of it is replicated.
func (r *recorder) Rollback() error {
	r.stmts = nil
	return r.tx.Rollback()
}

// recPrepared runs each execution through the recorder, so every one is
// kept as a statement of its own.
type recPrepared struct {
	r     *recorder
	query string
}

func (p recPrepared) ExecContext(ctx context.Context, args ...any) (sql.Result, error) {
	return p.r.ExecContext(ctx, p.query, args...)
}

func (p recPrepared) Close() error { return nil }

func (r *recorder) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return r.tx.QueryContext(ctx, query, args...)
}

func (r *recorder) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return r.tx.QueryRowContext(ctx, query, args...)
}

// writeReplicated is write in a replica group: capture, roll back,
// replicate, with replMu held throughout so that no other write of this
// process comes between the state the capture saw and the apply.
func (s *Store) writeReplicated(ctx context.Context, fn func(Tx) error) error {
	s.replMu.Lock()
	defer s.replMu.Unlock()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.note(fmt.Errorf("begin: %w", err))
	}
	rec := &recorder{tx: tx}
	ferr := fn(rec)
	if err := tx.Rollback(); err != nil && ferr == nil && !errors.Is(err, sql.ErrTxDone) {
		return s.note(fmt.Errorf("roll back the captured write: %w", err))
	}
	if ferr != nil {
		return s.note(ferr)
	}
	if len(rec.stmts) == 0 {
		return nil
	}
	return s.repl.ReplicateMeta(ctx, rec.stmts)
}

// AppliedIndex is the raft index of the last replicated write this
// database holds (0: none).
func (s *Store) AppliedIndex(ctx context.Context) (uint64, error) {
	var idx int64
	if err := s.r.QueryRowContext(ctx, `SELECT idx FROM raft_applied WHERE id = 1`).Scan(&idx); err != nil {
		return 0, s.note(fmt.Errorf("read the applied raft index: %w", err))
	}
	return uint64(idx), nil
}

// ApplyReplicated runs the statements of the replicated write at raft
// index idx in one transaction that also records idx, so an entry handed
// again after a restart (idx at or below the one recorded) changes
// nothing; it reports whether it applied them. It does not take replMu:
// on the leader the write that captured stmts holds it while waiting for
// this apply.
func (s *Store) ApplyReplicated(ctx context.Context, idx uint64, stmts []Stmt) (bool, error) {
	applied := false
	err := s.writeLocal(ctx, func(tx Tx) error {
		var have int64
		if err := tx.QueryRowContext(ctx, `SELECT idx FROM raft_applied WHERE id = 1`).Scan(&have); err != nil {
			return fmt.Errorf("read the applied raft index: %w", err)
		}
		if idx <= uint64(have) {
			return nil
		}
		for i, st := range stmts {
			if _, err := tx.ExecContext(ctx, st.Query, st.Args...); err != nil {
				return fmt.Errorf("replicated statement %d of %d at index %d: %w", i+1, len(stmts), idx, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE raft_applied SET idx = ? WHERE id = 1`, int64(idx)); err != nil {
			return fmt.Errorf("record the applied raft index: %w", err)
		}
		applied = true
		return nil
	})
	return applied, err
}
