package replica

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/postbus/postbus/broker/meta"
)

// Kinds of raft entry this package writes (the first byte of each).
const (
	kindRecords byte = 1 // a batch of commitlog records
	kindMeta    byte = 2 // the statements of one metadata write
	kindLeader  byte = 3 // a new leader's HTTP address
	kindTrim    byte = 4 // the leader's retention cut: the log below an offset goes
	kindGroup   byte = 5 // the group's id, proposed by its first leader
)

var errBadEntry = errors.New("malformed raft entry")

// encodeRecords lays out a records entry: kind, the proposing leader's
// epoch, the log offset the batch is written at, the count, then each
// record with its length.
func encodeRecords(epoch uint64, start int64, recs [][]byte) []byte {
	n := 1 + 8 + 8 + 4
	for _, r := range recs {
		n += 4 + len(r)
	}
	buf := make([]byte, 0, n)
	buf = append(buf, kindRecords)
	buf = binary.BigEndian.AppendUint64(buf, epoch)
	buf = binary.BigEndian.AppendUint64(buf, uint64(start))
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(recs)))
	for _, r := range recs {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(r)))
		buf = append(buf, r...)
	}
	return buf
}

// decodeRecords reads a records entry; the records alias data.
func decodeRecords(data []byte) (epoch uint64, start int64, recs [][]byte, err error) {
	if len(data) < 21 || data[0] != kindRecords {
		return 0, 0, nil, fmt.Errorf("records entry of %d bytes: %w", len(data), errBadEntry)
	}
	epoch = binary.BigEndian.Uint64(data[1:])
	start = int64(binary.BigEndian.Uint64(data[9:]))
	count := binary.BigEndian.Uint32(data[17:])
	rest := data[21:]
	recs = make([][]byte, 0, count)
	for i := uint32(0); i < count; i++ {
		if len(rest) < 4 {
			return 0, 0, nil, fmt.Errorf("records entry: record %d: %w", i, errBadEntry)
		}
		l := binary.BigEndian.Uint32(rest)
		if uint64(len(rest)-4) < uint64(l) {
			return 0, 0, nil, fmt.Errorf("records entry: record %d of %d bytes: %w", i, l, errBadEntry)
		}
		recs = append(recs, rest[4:4+l])
		rest = rest[4+l:]
	}
	if len(rest) != 0 {
		return 0, 0, nil, fmt.Errorf("records entry: %d bytes after the records: %w", len(rest), errBadEntry)
	}
	return epoch, start, recs, nil
}

// encodeTrim lays out a trim entry: kind, the proposing leader's epoch,
// and the offset the log is cut below (segments ending at or before it go).
func encodeTrim(epoch uint64, off int64) []byte {
	buf := make([]byte, 0, 17)
	buf = append(buf, kindTrim)
	buf = binary.BigEndian.AppendUint64(buf, epoch)
	return binary.BigEndian.AppendUint64(buf, uint64(off))
}

func decodeTrim(data []byte) (epoch uint64, off int64, err error) {
	if len(data) != 17 || data[0] != kindTrim {
		return 0, 0, fmt.Errorf("trim entry of %d bytes: %w", len(data), errBadEntry)
	}
	return binary.BigEndian.Uint64(data[1:]), int64(binary.BigEndian.Uint64(data[9:])), nil
}

// encodeGroup lays out a group entry: kind and the id.
func encodeGroup(id string) []byte { return append([]byte{kindGroup}, id...) }

func decodeGroup(data []byte) (string, error) {
	if len(data) < 2 || len(data) > 65 || data[0] != kindGroup {
		return "", fmt.Errorf("group entry of %d bytes: %w", len(data), errBadEntry)
	}
	return string(data[1:]), nil
}

// jsonStmt is a meta.Stmt with its arguments tagged by type, so each
// comes back as the same driver value on every member.
type jsonStmt struct {
	Q string    `json:"q"`
	A []jsonArg `json:"a,omitempty"`
}

type jsonArg struct {
	T string  `json:"t"` // n(il) i(nt64) f(loat64) b(ool) s(tring) x (bytes) t(ime)
	I int64   `json:"i,omitempty"`
	F float64 `json:"f,omitempty"`
	S string  `json:"s,omitempty"`
	X []byte  `json:"x,omitempty"`
}

func encodeMeta(epoch uint64, stmts []meta.Stmt) ([]byte, error) {
	out := make([]jsonStmt, len(stmts))
	for i, st := range stmts {
		out[i].Q = st.Query
		for j, a := range st.Args {
			var ja jsonArg
			switch v := a.(type) {
			case nil:
				ja.T = "n"
			case int64:
				ja.T, ja.I = "i", v
			case float64:
				ja.T, ja.F = "f", v
			case bool:
				ja.T = "b"
				if v {
					ja.I = 1
				}
			case string:
				ja.T, ja.S = "s", v
			case []byte:
				ja.T, ja.X = "x", v
				if v == nil {
					ja.T = "n"
				}
			case time.Time:
				ja.T, ja.S = "t", v.UTC().Format(time.RFC3339Nano)
			default:
				return nil, fmt.Errorf("statement %d argument %d: a %T cannot be replicated", i, j, a)
			}
			out[i].A = append(out[i].A, ja)
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode metadata entry: %w", err)
	}
	return append(binary.BigEndian.AppendUint64([]byte{kindMeta}, epoch), b...), nil
}

func decodeMeta(data []byte) (uint64, []meta.Stmt, error) {
	if len(data) < 9 || data[0] != kindMeta {
		return 0, nil, fmt.Errorf("metadata entry: %w", errBadEntry)
	}
	epoch := binary.BigEndian.Uint64(data[1:])
	var in []jsonStmt
	if err := json.Unmarshal(data[9:], &in); err != nil {
		return 0, nil, fmt.Errorf("metadata entry: %w: %w", errBadEntry, err)
	}
	out := make([]meta.Stmt, len(in))
	for i, st := range in {
		out[i].Query = st.Q
		out[i].Args = make([]any, len(st.A))
		for j, a := range st.A {
			var v any
			switch a.T {
			case "n":
			case "i":
				v = a.I
			case "f":
				v = a.F
			case "b":
				v = a.I == 1
			case "s":
				v = a.S
			case "x":
				v = a.X
				if a.X == nil {
					v = []byte{}
				}
			case "t":
				t, err := time.Parse(time.RFC3339Nano, a.S)
				if err != nil {
					return 0, nil, fmt.Errorf("metadata entry: statement %d argument %d: %w", i, j, err)
				}
				v = t
			default:
				return 0, nil, fmt.Errorf("metadata entry: statement %d argument %d of type %q: %w", i, j, a.T, errBadEntry)
			}
			out[i].Args[j] = v
		}
	}
	return epoch, out, nil
}

// leaderInfo is what a new leader announces: its id and the HTTP address
// the followers forward requests to.
type leaderInfo struct {
	ID   string `json:"id"`
	HTTP string `json:"http"`
	Term uint64 `json:"term"`
	// Epoch names this taking of the lead (a member may lead again in
	// one term after its broker was reopened): only records and metadata
	// entries proposed under the last announced epoch apply.
	Epoch uint64 `json:"epoch"`
}

func encodeLeader(li leaderInfo) []byte {
	b, _ := json.Marshal(li) // strings and a number: cannot fail
	return append([]byte{kindLeader}, b...)
}

func decodeLeader(data []byte) (leaderInfo, error) {
	var li leaderInfo
	if len(data) < 1 || data[0] != kindLeader {
		return li, fmt.Errorf("leader entry: %w", errBadEntry)
	}
	if err := json.Unmarshal(data[1:], &li); err != nil {
		return li, fmt.Errorf("leader entry: %w: %w", errBadEntry, err)
	}
	return li, nil
}
