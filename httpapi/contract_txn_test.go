package httpapi

import (
	"net/http"
	"testing"

	"github.com/postbus/postbus/broker"
)

// txnExchanges is the recorded traffic of transactions and producer groups
// (topic orders exists).
func txnExchanges() []exchange {
	jsonCT := map[string]string{"Content-Type": "application/json"}
	prep := map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc", "Postbus-Keys": "txn-key"}
	state := func(want string) func(tb testing.TB, _ *http.Response, body []byte) {
		return func(tb testing.TB, _ *http.Response, body []byte) {
			if got := jsonField(tb, body, "state"); got != want {
				tb.Errorf("state = %v, want %s", got, want)
			}
		}
	}
	return []exchange{
		{name: "put producer group/create", method: "PUT", path: "/v1/producer-groups/orders-svc", header: jsonCT,
			body: `{"check_url":"https://orders.example/txn-check"}`, status: 201, save: map[string]string{"pgsecret": "secret"}},
		{name: "put producer group/update", method: "PUT", path: "/v1/producer-groups/orders-svc", header: jsonCT,
			body: `{"check_url":"https://orders.example/txn-check-2"}`, status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if u := jsonField(tb, body, "check_url"); u != "https://orders.example/txn-check-2" {
					tb.Errorf("check_url = %v after the update", u)
				}
			}},
		{name: "put producer group/bad url", method: "PUT", path: "/v1/producer-groups/orders-svc", header: jsonCT,
			body: `{"check_url":"ftp://orders.example/x"}`, status: 400, code: broker.CodeInvalidProducerGroup, invalid: true},
		{name: "put producer group/no url", method: "PUT", path: "/v1/producer-groups/orders-svc", header: jsonCT,
			body: `{}`, status: 400, code: broker.CodeInvalidProducerGroup, invalid: true},
		{name: "get producer group", method: "GET", path: "/v1/producer-groups/orders-svc", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if s := jsonField(tb, body, "secret"); s != nil {
					tb.Errorf("GET shows the secret")
				}
			}},
		{name: "get producer group/not found", method: "GET", path: "/v1/producer-groups/nobody", status: 404,
			code: broker.CodeProducerGroupNotFound},
		{name: "get producer group/bad name", method: "GET", path: "/v1/producer-groups/%25bad", status: 400,
			code: broker.CodeInvalidProducerGroup, invalid: true},
		{name: "rotate producer group secret", method: "POST", path: "/v1/producer-groups/orders-svc/rotate-secret", status: 200},
		{name: "rotate producer group secret/unknown", method: "POST", path: "/v1/producer-groups/nobody/rotate-secret", status: 404,
			code: broker.CodeProducerGroupNotFound},

		{name: "prepare", method: "POST", path: "/v1/topics/orders/messages", header: prep, body: "txn body", status: 201,
			save: map[string]string{"txn": "transaction_id", "txnmsg": "msg_id"},
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if s := jsonField(tb, body, "status"); s != "PREPARED" {
					tb.Errorf("status = %v, want PREPARED", s)
				}
			}},
		{name: "prepare/bad step", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 400, code: codeInvalidHeader,
			header: map[string]string{"Postbus-Transaction": "commit", "Postbus-Producer-Group": "orders-svc"}, invalid: true},
		{name: "prepare/no group", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 400, code: codeInvalidHeader,
			header: map[string]string{"Postbus-Transaction": "prepare"}},
		{name: "prepare/group alone", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 400, code: codeInvalidHeader,
			header: map[string]string{"Postbus-Producer-Group": "orders-svc"}},
		{name: "prepare/bad timeout", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 400, code: codeInvalidHeader,
			header: map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc", "Postbus-Transaction-Timeout": "soon"}, invalid: true},
		{name: "prepare/unknown group", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 404, code: broker.CodeProducerGroupNotFound,
			header: map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "nobody"}},
		{name: "prepare/delayed", method: "POST", path: "/v1/topics/orders/messages", body: "x", status: 400, code: broker.CodeInvalidTransaction,
			header: map[string]string{"Postbus-Transaction": "prepare", "Postbus-Producer-Group": "orders-svc", "Postbus-Delay": "10s"}},
		{name: "get message/prepared", method: "GET", path: "/v1/messages/{txnmsg}", status: 200, check: state("PREPARED")},
		{name: "get transaction", method: "GET", path: "/v1/transactions/{txn}", status: 200, check: state("PREPARED")},
		{name: "get transaction/not found", method: "GET", path: "/v1/transactions/AAAAAAAAAAAAAAAAAAAAAA", status: 404,
			code: broker.CodeTransactionNotFound},
		{name: "get transaction/bad id", method: "GET", path: "/v1/transactions/not-an-id", status: 400,
			code: broker.CodeInvalidTransaction, invalid: true},
		{name: "list transactions/prepared", method: "GET", path: "/v1/transactions?state=prepared&limit=10", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				if txs, _ := jsonField(tb, body, "transactions").([]any); len(txs) != 1 {
					tb.Errorf("%d prepared transactions, want 1", len(txs))
				}
			}},
		{name: "list transactions/bad state", method: "GET", path: "/v1/transactions?state=maybe", status: 400,
			code: codeInvalidParameter, invalid: true},
		{name: "commit", method: "POST", path: "/v1/transactions/{txn}/commit", status: 200, check: state("COMMITTED")},
		{name: "commit/again", method: "POST", path: "/v1/transactions/{txn}/commit", status: 200, check: state("COMMITTED")},
		{name: "rollback/after commit", method: "POST", path: "/v1/transactions/{txn}/rollback", status: 409,
			code: broker.CodeTransactionDecided},
		{name: "commit/unknown", method: "POST", path: "/v1/transactions/AAAAAAAAAAAAAAAAAAAAAA/commit", status: 404,
			code: broker.CodeTransactionNotFound},
		{name: "get message/committed", method: "GET", path: "/v1/messages/{txnmsg}", status: 200, check: state("COMMITTED")},
		{name: "trace/committed", method: "GET", path: "/v1/messages/{txnmsg}/trace", status: 200,
			check: func(tb testing.TB, _ *http.Response, body []byte) {
				tx, _ := jsonField(tb, body, "transaction").(map[string]any)
				if tx["state"] != "COMMITTED" || tx["reason"] != "decided by the producer" {
					tb.Errorf("trace's transaction = %v", tx)
				}
			}},
		{name: "prepare/second", method: "POST", path: "/v1/topics/orders/messages", header: prep, body: "undone", status: 201,
			save: map[string]string{"txn2": "transaction_id"}},
		{name: "rollback", method: "POST", path: "/v1/transactions/{txn2}/rollback", status: 200, check: state("ROLLED_BACK")},
		{name: "commit/after rollback", method: "POST", path: "/v1/transactions/{txn2}/commit", status: 409,
			code: broker.CodeTransactionDecided},
	}
}
