package httpapi

import (
	"maps"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// In a cluster a producer group is registered on every broker with one
// secret, a transaction id names the broker holding it, and a decision or
// a look-up sent to any broker reaches that one.
func TestClusterTransactions(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	tc.placeTopic(t, brokerA, "orders", `{"queues":1,"brokers":["broker-b"]}`, brokerB)
	jsonCT := map[string]string{"Content-Type": "application/json"}
	a := tc.via(t, brokerA, "PUT", "/v1/producer-groups/shop", jsonCT, `{"check_url":"https://shop.example/check"}`)
	if a.status != http.StatusCreated && a.status != http.StatusOK {
		t.Fatalf("put producer group: %s", a)
	}
	if decodeAs[producerGroupJSON](t, a).Secret == "" {
		t.Fatalf("put producer group answered no secret: %s", a)
	}
	for _, name := range tc.names {
		tc.at(t, name, "GET", "/v1/producer-groups/shop", "").want(t, http.StatusOK, name)
	}

	prep := map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "shop"}
	a = tc.via(t, brokerC, "POST", "/v1/topics/orders/messages", prep, "txn")
	if a.status != http.StatusCreated {
		t.Fatalf("prepare through %s: %s", brokerC, a)
	}
	res := decodeAs[prepareResult](t, a)
	if res.Broker != brokerB || !strings.HasPrefix(res.TransactionID, brokerB+"~") || res.TransactionID != brokerB+"~"+res.MsgID {
		t.Fatalf("prepare answered %+v; want it held by %s, its id naming it", res, brokerB)
	}
	// Any broker finds it; the one asked directly for itself does not.
	tc.via(t, brokerA, "GET", "/v1/transactions/"+res.TransactionID, nil, "").want(t, http.StatusOK, brokerB)
	tc.at(t, brokerA, "GET", "/v1/transactions/"+res.TransactionID, "").wantProblem(t, http.StatusNotFound, "transaction_not_found", brokerA)

	a = tc.via(t, brokerC, "POST", "/v1/transactions/"+res.TransactionID+"/commit", nil, "")
	a.want(t, http.StatusOK, brokerB)
	if got := decodeAs[transactionJSON](t, a); got.State != "COMMITTED" || got.TransactionID != res.TransactionID {
		t.Fatalf("commit through %s answered %+v", brokerC, got)
	}
	tc.via(t, brokerA, "POST", "/v1/transactions/"+res.TransactionID+"/rollback", nil, "").
		wantProblem(t, http.StatusConflict, "transaction_decided", brokerB)
	// A transaction id naming a broker no name server knows, live or
	// gone, is not found (attack G5: a 503 "retry once it is back" had a
	// producer retry a garbled id for ever).
	tc.via(t, brokerA, "POST", "/v1/transactions/broker-x~"+res.MsgID+"/commit", nil, "").
		wantProblem(t, http.StatusNotFound, "transaction_not_found", brokerA)

	// A malformed id is one 400, whoever it names ("~X" answered 404).
	for _, id := range []string{"~" + res.MsgID, "~", brokerB + "~", brokerB + "~" + res.MsgID + "~x", "-b~" + res.MsgID,
		strings.Repeat("b", 65) + "~" + res.MsgID, brokerB + "~" + strings.Repeat("m", 65), "m.x"} {
		for _, at := range []string{brokerA, brokerB} {
			tc.via(t, at, "GET", "/v1/transactions/"+id, nil, "").wantProblem(t, http.StatusBadRequest, "invalid_transaction", at)
			tc.via(t, at, "POST", "/v1/transactions/"+id+"/commit", nil, "").wantProblem(t, http.StatusBadRequest, "invalid_transaction", at)
		}
	}

	// The holder stopped while still registered: 503 with Retry-After.
	a = tc.via(t, brokerC, "POST", "/v1/topics/orders/messages", prep, "txn 2")
	if a.status != http.StatusCreated {
		t.Fatalf("prepare through %s: %s", brokerC, a)
	}
	open := decodeAs[prepareResult](t, a)
	tc.nodes[brokerB].srv.Close()
	a = tc.via(t, brokerA, "POST", "/v1/transactions/"+open.TransactionID+"/commit", nil, "")
	a.wantProblem(t, http.StatusServiceUnavailable, "broker_unavailable", brokerA)
	if a.header.Get("Retry-After") == "" {
		t.Fatalf("503 for a stopped holder without Retry-After: %s", a)
	}
}

// TestClusterTransactionList: GET /v1/transactions through any broker
// lists every broker's transactions, each naming its broker, and its
// composite cursor pages through all of them once (it listed only the
// broker asked).
func TestClusterTransactionList(t *testing.T) {
	tc := newTestCluster(t, brokerA, brokerB, brokerC)
	tc.placeTopic(t, brokerA, "on-b", `{"queues":1,"brokers":["broker-b"]}`, brokerB)
	tc.placeTopic(t, brokerA, "on-c", `{"queues":1,"brokers":["broker-c"]}`, brokerC)
	tc.via(t, brokerA, "PUT", "/v1/producer-groups/shop", map[string]string{"Content-Type": "application/json"},
		`{"check_url":"https://shop.example/check"}`).want(t, http.StatusCreated, brokerA)
	prep := map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "shop"}
	want := map[string]string{} // transaction id -> broker
	for i := range 3 {
		for topic, holder := range map[string]string{"on-b": brokerB, "on-c": brokerC} {
			a := tc.via(t, brokerA, "POST", "/v1/topics/"+topic+"/messages", prep, "txn")
			if a.status != http.StatusCreated {
				t.Fatalf("prepare %d on %s: %s", i, topic, a)
			}
			want[decodeAs[prepareResult](t, a).TransactionID] = holder
		}
	}
	type page struct {
		Transactions []struct {
			TransactionID string `json:"transaction_id"`
			State         string `json:"state"`
			Broker        string `json:"broker"`
		} `json:"transactions"`
		NextCursor string   `json:"next_cursor"`
		Incomplete []string `json:"incomplete"`
	}
	for _, via := range []string{brokerA, brokerC} {
		got := map[string]string{}
		query := "/v1/transactions?state=prepared&limit=2"
		for pages := 0; ; pages++ {
			if pages > 6 {
				t.Fatalf("through %s: still a cursor after %d pages", via, pages)
			}
			a := tc.via(t, via, "GET", query, nil, "")
			a.want(t, http.StatusOK, via)
			p := decodeAs[page](t, a)
			if len(p.Incomplete) > 0 {
				t.Fatalf("through %s: incomplete %v", via, p.Incomplete)
			}
			for _, tx := range p.Transactions {
				if _, dup := got[tx.TransactionID]; dup {
					t.Fatalf("through %s: %s listed twice", via, tx.TransactionID)
				}
				if tx.State != "PREPARED" {
					t.Fatalf("through %s: %s is %s", via, tx.TransactionID, tx.State)
				}
				got[tx.TransactionID] = tx.Broker
			}
			if p.NextCursor == "" {
				break
			}
			query = "/v1/transactions?state=prepared&limit=2&cursor=" + url.QueryEscape(p.NextCursor)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("through %s the list held %v; want %v", via, got, want)
		}
	}
	tc.via(t, brokerA, "GET", "/v1/transactions?cursor=junk", nil, "").wantProblem(t, http.StatusBadRequest, "invalid_parameter", brokerA)
}
