package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// apiCall makes one call to the broker's API, with body as JSON unless it
// is nil, and returns the answer, closed, with up to maxErrorBody bytes of
// its body. Errors start with what.
func apiCall(ctx context.Context, client *http.Client, method, u, what string, body []byte) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: read answer: %w", what, err)
	}
	return resp, b, nil
}

// createTopic makes sure the topic exists with PUT /v1/topics/{topic}.
func createTopic(ctx context.Context, client *http.Client, base, topic string, queues int) error {
	body := fmt.Appendf(nil, `{"queues":%d}`, queues)
	resp, b, err := apiCall(ctx, client, http.MethodPut, base+"/v1/topics/"+topic, "create topic "+topic, body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		_, text := problemKey(resp, b)
		return fmt.Errorf("create topic %s at %s: %s (--create=false skips this step)", topic, base, text)
	}
	return nil
}

// postSubscription creates a subscription from the JSON fields and returns
// its id; what names it in errors. existed reports a 409, a group that has
// a subscription already: an error to a caller that wants a new one, an
// answer to one that can use the old.
func postSubscription(ctx context.Context, client *http.Client, base, what string, fields map[string]any) (id string, existed bool, err error) {
	body, err := json.Marshal(fields)
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", what, err)
	}
	resp, b, err := apiCall(ctx, client, http.MethodPost, base+"/v1/subscriptions", what, body)
	if err != nil {
		return "", false, err
	}
	if resp.StatusCode != http.StatusCreated {
		_, text := problemKey(resp, b)
		return "", resp.StatusCode == http.StatusConflict, fmt.Errorf("%s at %s: %s", what, base, text)
	}
	var created struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &created); err != nil || created.ID == "" {
		return "", false, fmt.Errorf("%s: answer without an id: %s", what, truncate(string(b), 200))
	}
	return created.ID, false, nil
}

// subscriptionVerb pauses or resumes (verb) subscription id.
func subscriptionVerb(ctx context.Context, client *http.Client, base, id, verb string) error {
	what := verb + " subscription " + id
	resp, b, err := apiCall(ctx, client, http.MethodPost, base+"/v1/subscriptions/"+url.PathEscape(id)+"/"+verb, what, nil)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		_, text := problemKey(resp, b)
		return fmt.Errorf("%s at %s: %s", what, base, text)
	}
	return nil
}

// deleteSubscription deletes subscription id; one already gone is fine.
func deleteSubscription(ctx context.Context, client *http.Client, base, id string) error {
	what := "delete subscription " + id
	resp, b, err := apiCall(ctx, client, http.MethodDelete, base+"/v1/subscriptions/"+url.PathEscape(id), what, nil)
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK, http.StatusNotFound:
		return nil
	}
	_, text := problemKey(resp, b)
	return fmt.Errorf("%s: %s", what, text)
}

// deleteSubscriptions deletes the subscriptions a run created, however it
// ended, even after ctx is cancelled: one left behind would keep pushing to
// a closed port, or keep a group's backlog. What it cannot delete it warns
// of on out.
func deleteSubscriptions(ctx context.Context, client *http.Client, base string, ids []string, out io.Writer) {
	if len(ids) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	// A client of its own: the run's connections may all still be held
	// by requests the interrupt is cutting off, and the deletes would
	// wait for one of them (up to the request timeout).
	client = newClient(1, client.Timeout)
	defer client.CloseIdleConnections()
	for _, id := range ids {
		if err := deleteSubscription(cctx, client, base, id); err != nil {
			fmt.Fprintf(out, "warning: %v (delete it with DELETE /v1/subscriptions/%s)\n", err, id)
		}
	}
}
