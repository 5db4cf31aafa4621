package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// adminNouns lists every noun's verbs.
func adminNouns() map[string]map[string]adminVerb {
	return map[string]map[string]adminVerb{
		"topics":        topicVerbs(),
		"groups":        groupVerbs(),
		"messages":      messageVerbs(),
		"dlq":           dlqVerbs(),
		"subscriptions": subscriptionVerbs(),
		"replicas":      replicaVerbs(),
		"cluster":       clusterVerbs(),
		"transactions":  transactionVerbs(),
	}
}

func topicVerbs() map[string]adminVerb {
	var queues int
	var retention string
	var yes bool
	return map[string]adminVerb{
		"list": {summary: "List the topics: name, queues, brokers, created.", example: "postbus admin topics list", nargs: 0,
			run: func(c *adminClient, _ []string) error {
				rows, err := c.getAll("/v1/topics", "topics")
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(map[string]any{"topics": rows})
				}
				return c.printTable(rows, column{"TOPIC", "name"}, column{"QUEUES", "queue_count"}, column{"RETENTION", "retention"},
					column{"BROKERS", "brokers"}, column{"CREATED", "created_at"})
			}},
		"show": {args: "TOPIC", summary: "Show a topic: its settings, and per queue the min and max offsets and the messages and bytes kept.",
			example: "postbus admin topics show orders", nargs: 1,
			run: func(c *adminClient, a []string) error {
				var t map[string]any
				raw, err := c.getJSON("/v1/topics/"+pathEsc(a[0]), &t)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				if err := c.printFields(t, column{"Topic", "name"}, column{"Queues", "queue_count"}, column{"Retention", "retention"},
					column{"Messages", "messages"}, column{"Bytes", "bytes"}, column{"Brokers", "brokers"}, column{"Created", "created_at"}); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout)
				return c.printTable(objects(t["queues"]), column{"QUEUE", "queue_id"}, column{"MIN", "min_offset"}, column{"MAX", "max_offset"},
					column{"MESSAGES", "messages"}, column{"BYTES", "bytes"}, column{"BROKER", "broker"})
			}},
		"create": {args: "TOPIC", summary: "Create a topic; refused (exit 4) if it exists (use grow).",
			example: "postbus admin topics create orders --queues 8 --retention 168h", nargs: 1,
			flags: func(fs *flag.FlagSet) {
				fs.IntVar(&queues, "queues", 0, "queue count (0: the broker's --default-queues)")
				fs.StringVar(&retention, "retention", "", "how long messages are kept, e.g. 168h (empty: the broker's --retention)")
			},
			run: func(c *adminClient, a []string) error {
				if _, err := c.do("GET", "/v1/topics/"+pathEsc(a[0]), nil, nil); err == nil {
					return &adminError{exitRefused, fmt.Sprintf("topic %s exists; \"postbus admin topics grow\" adds queues", a[0])}
				} else if adminExitCode(err) != exitNotFound {
					return err
				}
				return c.putTopic(a[0], queues, retention)
			}},
		"grow": {args: "TOPIC", summary: "Give an existing topic more queues (a topic never shrinks).",
			example: "postbus admin topics grow orders --queues 16", nargs: 1,
			flags: func(fs *flag.FlagSet) {
				fs.IntVar(&queues, "queues", 0, "the new queue count, more than the current one (required)")
			},
			run: func(c *adminClient, a []string) error {
				var t struct {
					Queues int `json:"queue_count"`
				}
				if _, err := c.getJSON("/v1/topics/"+pathEsc(a[0]), &t); err != nil {
					return err
				}
				if queues <= t.Queues {
					return &adminError{exitUsage, fmt.Sprintf("--queues %d: topic %s has %d queues; give more", queues, a[0], t.Queues)}
				}
				return c.putTopic(a[0], queues, "")
			}},
		"delete": {args: "TOPIC", summary: "Delete a topic with its messages, subscriptions and offsets (needs --yes).",
			example: "postbus admin topics delete orders --yes", nargs: 1,
			flags: func(fs *flag.FlagSet) { fs.BoolVar(&yes, "yes", false, "really delete") },
			run: func(c *adminClient, a []string) error {
				if err := confirm(yes, "deleting topic "+a[0]); err != nil {
					return err
				}
				if _, err := c.do("DELETE", "/v1/topics/"+pathEsc(a[0]), nil, nil); err != nil {
					return err
				}
				return c.done(map[string]any{"deleted": a[0]}, "deleted topic "+a[0])
			}},
	}
}

func (c *adminClient) putTopic(name string, queues int, retention string) error {
	if queues < 0 {
		return &adminError{exitUsage, fmt.Sprintf("--queues %d: want a queue count (0: the broker's default)", queues)}
	}
	body := map[string]any{}
	if queues > 0 {
		body["queues"] = queues
	}
	if retention != "" {
		body["retention"] = retention
	}
	var t map[string]any
	raw, err := c.sendJSON("PUT", "/v1/topics/"+pathEsc(name), body, &t)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	return c.printFields(t, column{"Topic", "name"}, column{"Queues", "queue_count"}, column{"Retention", "retention"}, column{"Brokers", "brokers"})
}

// done prints the outcome of a verb that answers nothing worth a table.
func (c *adminClient) done(v any, line string) error {
	if c.output == "json" {
		return c.printJSON(v)
	}
	_, err := fmt.Fprintln(c.stdout, line)
	return err
}

// objects returns a JSON array's objects.
func objects(v any) []map[string]any {
	arr, _ := v.([]any)
	out := make([]map[string]any, 0, len(arr))
	for _, e := range arr {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func groupVerbs() map[string]adminVerb {
	var topic, to string
	return map[string]adminVerb{
		"list": {summary: "List the consumer groups: lag, dead letters, held polls, age of the oldest unacked message.",
			example: "postbus admin groups list", nargs: 0,
			run: func(c *adminClient, _ []string) error {
				rows, err := c.getAll("/v1/groups", "groups")
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(map[string]any{"groups": rows})
				}
				for _, r := range rows {
					var topics []string
					for _, s := range objects(r["subscriptions"]) {
						topics = append(topics, fmt.Sprintf("%v(%v)", s["topic"], s["type"]))
					}
					r["topics"] = strings.Join(topics, ",")
				}
				return c.printTable(rows, column{"GROUP", "name"}, column{"LAG", "lag"}, column{"DEAD", "dead_letters"},
					column{"HELD_POLLS", "held_polls"}, column{"OLDEST_UNACKED_S", "oldest_unacked_seconds"}, column{"TOPICS", "topics"})
			}},
		"show": {args: "GROUP", summary: "Show a group: its subscriptions, and per queue its offset, the max offset, lag, expired and in flight.",
			example: "postbus admin groups show billing", nargs: 1,
			run: func(c *adminClient, a []string) error {
				var g map[string]any
				raw, err := c.getJSON("/v1/groups/"+pathEsc(a[0]), &g)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				if err := c.printFields(g, column{"Group", "name"}, column{"Lag", "lag"}, column{"Dead letters", "dead_letters"},
					column{"Held polls", "held_polls"}, column{"Oldest unacked (s)", "oldest_unacked_seconds"}); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout)
				if err := c.printTable(objects(g["subscriptions"]), column{"SUBSCRIPTION", "id"}, column{"TOPIC", "topic"}, column{"TYPE", "type"},
					column{"STATE", "state"}, column{"FILTER", "filter"}, column{"URL", "url"}); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout)
				return c.printTable(objects(g["queues"]), column{"TOPIC", "topic"}, column{"QUEUE", "queue_id"}, column{"OFFSET", "offset"},
					column{"MAX", "max_offset"}, column{"LAG", "lag"}, column{"EXPIRED", "expired"}, column{"IN_FLIGHT", "in_flight"}, column{"BROKER", "broker"})
			}},
		"reset": {args: "GROUP", summary: "Move a group's offsets on a topic to earliest, latest or a time; what it had out is dropped.",
			example: "postbus admin groups reset billing --topic orders --to 2026-01-02T15:04:05Z", nargs: 1,
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&topic, "topic", "", "the topic (required)")
				fs.StringVar(&to, "to", "", "earliest, latest or an RFC 3339 time (required)")
			},
			run: func(c *adminClient, a []string) error {
				if topic == "" || to == "" {
					return &adminError{exitUsage, "--topic and --to are required"}
				}
				raw, err := c.sendJSON("POST", "/v1/groups/"+pathEsc(a[0])+"/offsets/reset", map[string]string{"topic": topic, "to": to}, nil)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				_, err = fmt.Fprintf(c.stdout, "reset group %s on %s to %s\n", a[0], topic, to)
				return err
			}},
	}
}

func messageVerbs() map[string]adminVerb {
	var body, bodyFile, tag, keys, contentType, delay string
	var limit int
	var rawBody bool
	showMsg := func(c *adminClient, m map[string]any) error {
		if err := c.printFields(m, column{"Message", "msg_id"}, column{"Topic", "topic"}, column{"Queue", "queue_id"}, column{"Offset", "queue_offset"},
			column{"Tag", "tag"}, column{"Keys", "keys"}, column{"Content-Type", "content_type"}, column{"Born", "born_at"},
			column{"Stored", "stored_at"}, column{"Deliver at", "deliver_at"}, column{"Size", "size"}, column{"Properties", "properties"}, column{"Broker", "broker"}); err != nil {
			return err
		}
		if b, ok := m["body"].(string); ok {
			if m["encoding"] == "base64" {
				_, err := fmt.Fprintf(c.stdout, "Body (base64):\n%s\n", b)
				return err
			}
			_, err := fmt.Fprintf(c.stdout, "Body:\n%s\n", b)
			return err
		}
		return nil
	}
	return map[string]adminVerb{
		"get": {args: "MSG_ID", summary: "Show a message: its metadata and body (--raw: the body alone, as published).",
			example: "postbus admin messages get e8YkbxTeFCamqCqLwxa3Fv", nargs: 1,
			flags: func(fs *flag.FlagSet) { fs.BoolVar(&rawBody, "raw", false, "write only the body, byte for byte") },
			run: func(c *adminClient, a []string) error {
				if rawBody {
					b, err := c.do("GET", "/v1/messages/"+pathEsc(a[0])+"/body", nil, nil)
					if err != nil {
						return err
					}
					_, err = c.stdout.Write(b)
					return err
				}
				var m map[string]any
				raw, err := c.getJSON("/v1/messages/"+pathEsc(a[0]), &m)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				return showMsg(c, m)
			}},
		"key": {args: "TOPIC KEY", summary: "List a topic's messages with a key, newest first.",
			example: "postbus admin messages key orders order-1001", nargs: 2,
			flags: func(fs *flag.FlagSet) { fs.IntVar(&limit, "limit", 0, "at most this many (0: the broker's default)") },
			run: func(c *adminClient, a []string) error {
				q := url.Values{"key": {a[1]}}
				if limit > 0 {
					q.Set("limit", strconv.Itoa(limit))
				}
				var page map[string]any
				raw, err := c.getJSON("/v1/topics/"+pathEsc(a[0])+"/messages?"+q.Encode(), &page)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				return c.printTable(objects(page["messages"]), column{"MSG_ID", "msg_id"}, column{"QUEUE", "queue_id"}, column{"OFFSET", "queue_offset"},
					column{"TAG", "tag"}, column{"KEYS", "keys"}, column{"SIZE", "size"}, column{"STORED", "stored_at"})
			}},
		"trace": {args: "MSG_ID", summary: "Show every delivery attempt of a message: group, time, outcome, error, latency.",
			example: "postbus admin messages trace e8YkbxTeFCamqCqLwxa3Fv", nargs: 1,
			run: func(c *adminClient, a []string) error {
				var tr map[string]any
				raw, err := c.getJSON("/v1/messages/"+pathEsc(a[0])+"/trace", &tr)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				if err := c.printFields(tr, column{"Message", "msg_id"}, column{"Topic", "topic"}, column{"Stored", "stored_at"}); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout)
				return c.printTable(objects(tr["attempts"]), column{"AT", "at"}, column{"GROUP", "group"}, column{"SUBSCRIPTION", "subscription"},
					column{"ATTEMPT", "attempt"}, column{"OUTCOME", "outcome"}, column{"STATUS", "status"}, column{"LATENCY_MS", "latency_ms"}, column{"ERROR", "error"})
			}},
		"send": {args: "TOPIC", summary: "Publish one message: --body, --body-file, or standard input.",
			example: `postbus admin messages send orders --tag created --keys order-1001 --body '{"id":1001}'`, nargs: 1,
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&body, "body", "", "the body")
				fs.StringVar(&bodyFile, "body-file", "", "read the body from this file (- for standard input)")
				fs.StringVar(&tag, "tag", "", "the tag")
				fs.StringVar(&keys, "keys", "", "keys, comma-separated")
				fs.StringVar(&contentType, "content-type", "application/json", "the body's content type")
				fs.StringVar(&delay, "delay", "", "deliver after this long, e.g. 10s")
			},
			run: func(c *adminClient, a []string) error {
				var data []byte
				switch {
				case body != "" && bodyFile != "":
					return &adminError{exitUsage, "give --body or --body-file, not both"}
				case bodyFile == "-":
					b, err := io.ReadAll(os.Stdin)
					if err != nil {
						return err
					}
					data = b
				case bodyFile != "":
					b, err := os.ReadFile(bodyFile)
					if err != nil {
						return &adminError{exitUsage, fmt.Sprintf("--body-file: %v", err)}
					}
					data = b
				case body == "" && stdinPiped():
					b, err := io.ReadAll(os.Stdin)
					if err != nil {
						return err
					}
					data = b
				case body == "":
					return &adminError{exitUsage, "no body: give --body, --body-file, or pipe it on standard input"}
				default:
					data = []byte(body)
				}
				if len(data) == 0 {
					// An empty pipe or file is the same mistake as no body
					// at all: say so before any request, with one exit code.
					return &adminError{exitUsage, "the body is empty: a message needs at least one byte"}
				}
				h := http.Header{"Content-Type": {contentType}}
				if tag != "" {
					h.Set("Postbus-Tag", tag)
				}
				if keys != "" {
					h.Set("Postbus-Keys", keys)
				}
				if delay != "" {
					h.Set("Postbus-Delay", delay)
				}
				raw, err := c.do("POST", "/v1/topics/"+pathEsc(a[0])+"/messages", data, h)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				var ack map[string]any
				if err := json.Unmarshal(raw, &ack); err != nil {
					return &adminError{exitFailed, fmt.Sprintf("the answer is not JSON: %v", err)}
				}
				return c.printFields(ack, column{"Message", "msg_id"}, column{"Topic", "topic"}, column{"Queue", "queue_id"},
					column{"Offset", "queue_offset"}, column{"Status", "status"}, column{"Duplicate", "duplicate"}, column{"Broker", "broker"})
			}},
	}
}

func dlqVerbs() map[string]adminVerb {
	var all, yes bool
	var rate float64
	dlqCols := []column{{"MSG_ID", "msg_id"}, {"ORIGIN_TOPIC", "origin_topic"}, {"ATTEMPTS", "attempts"}, {"DEAD_AT", "dead_at"}, {"LAST_ERROR", "last_error"}}
	return map[string]adminVerb{
		"list": {args: "GROUP", summary: "List a group's dead letters: origin topic, attempts, when, the last error.",
			example: "postbus admin dlq list billing", nargs: 1,
			run: func(c *adminClient, a []string) error {
				rows, err := c.getAll("/v1/groups/"+pathEsc(a[0])+"/dlq", "messages")
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(map[string]any{"messages": rows})
				}
				return c.printTable(rows, dlqCols...)
			}},
		"show": {args: "GROUP MSG_ID", summary: "Show one dead letter of a group: why it died, and the message.",
			example: "postbus admin dlq show billing e8YkbxTeFCamqCqLwxa3Fv", nargs: 2,
			run: func(c *adminClient, a []string) error {
				rows, err := c.getAll("/v1/groups/"+pathEsc(a[0])+"/dlq", "messages")
				if err != nil {
					return err
				}
				for _, r := range rows {
					if r["msg_id"] != a[1] {
						continue
					}
					if c.output == "json" {
						return c.printJSON(r)
					}
					if err := c.printFields(r, column{"Message", "msg_id"}, column{"Origin topic", "origin_topic"}, column{"Attempts", "attempts"},
						column{"Dead at", "dead_at"}, column{"Last error", "last_error"}, column{"Tag", "tag"}, column{"Keys", "keys"},
						column{"Content-Type", "content_type"}, column{"Born", "born_at"}); err != nil {
						return err
					}
					_, err := fmt.Fprintf(c.stdout, "Body (%s):\n%s\n", cell(r["encoding"]), cell(r["body"]))
					return err
				}
				return &adminError{exitNotFound, fmt.Sprintf("no dead letter %s in group %s", a[1], a[0])}
			}},
		"redrive": {args: "GROUP [MSG_ID...]", summary: "Send dead letters back to the group (the ones named, or --all), at --rate a second.",
			example: "postbus admin dlq redrive billing --all --rate 20", nargs: -1,
			flags: func(fs *flag.FlagSet) {
				fs.BoolVar(&all, "all", false, "every dead letter of the group")
				fs.Float64Var(&rate, "rate", 0, "redriven messages due a second (0: the broker's default, 50)")
			},
			run: func(c *adminClient, a []string) error {
				if len(a) == 0 {
					return &adminError{exitUsage, "name the group"}
				}
				req := map[string]any{}
				switch {
				case all && len(a) > 1:
					return &adminError{exitUsage, "give message ids or --all, not both"}
				case all:
					req["all"] = true
				case len(a) > 1:
					req["msg_ids"] = a[1:]
				default:
					return &adminError{exitUsage, "give the message ids to redrive, or --all"}
				}
				if rate > 0 {
					req["rate_per_second"] = rate
				}
				var res map[string]any
				raw, err := c.sendJSON("POST", "/v1/groups/"+pathEsc(a[0])+"/dlq/redrive", req, &res)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				return c.printFields(res, column{"Redriven", "redriven"}, column{"Rate a second", "rate_per_second"}, column{"Done by", "done_by"})
			}},
		"purge": {args: "GROUP", summary: "Delete every dead letter of a group (needs --yes).",
			example: "postbus admin dlq purge billing --yes", nargs: 1,
			flags: func(fs *flag.FlagSet) { fs.BoolVar(&yes, "yes", false, "really purge") },
			run: func(c *adminClient, a []string) error {
				if err := confirm(yes, "purging the dead letters of "+a[0]); err != nil {
					return err
				}
				var res map[string]any
				raw, err := c.sendJSON("DELETE", "/v1/groups/"+pathEsc(a[0])+"/dlq", nil, &res)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				_, err = fmt.Fprintf(c.stdout, "purged %s dead letters of %s\n", cell(res["purged"]), a[0])
				return err
			}},
	}
}

func subscriptionVerbs() map[string]adminVerb {
	var group, topic, hook, filter, startFrom, visibility, format string
	var ordered bool
	var maxRetries int
	subCols := []column{{"ID", "id"}, {"GROUP", "group"}, {"TOPIC", "topic"}, {"TYPE", "type"}, {"STATE", "state"}, {"FILTER", "filter"}, {"URL", "url"}}
	subFields := []column{{"ID", "id"}, {"Group", "group"}, {"Topic", "topic"}, {"Type", "type"}, {"State", "state"}, {"State reason", "state_reason"},
		{"URL", "url"}, {"Filter", "filter"}, {"Ordered", "ordered"}, {"Max retries", "max_retries"}, {"Retry delays", "retry_delays"},
		{"Backoff", "backoff"}, {"Timeout", "timeout"}, {"Max in flight", "max_in_flight"}, {"Rate a second", "rate_per_second"}, {"Batch", "batch"},
		{"Visibility", "visibility"}, {"Start from", "start_from"}, {"Secret", "secret"}, {"Created", "created_at"}, {"Updated", "updated_at"},
		{"Format", "format"}}
	one := func(method, suffix string) func(c *adminClient, a []string) error {
		return func(c *adminClient, a []string) error {
			var s map[string]any
			raw, err := c.sendJSON(method, "/v1/subscriptions/"+pathEsc(a[0])+suffix, nil, &s)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.printJSON(raw)
			}
			return c.printFields(s, subFields...)
		}
	}
	return map[string]adminVerb{
		"list": {summary: "List the subscriptions (--group, --topic narrow the list).", example: "postbus admin subscriptions list --group billing", nargs: 0,
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&group, "group", "", "only this group's")
				fs.StringVar(&topic, "topic", "", "only this topic's")
			},
			run: func(c *adminClient, _ []string) error {
				rows, err := c.getAll("/v1/subscriptions", "subscriptions")
				if err != nil {
					return err
				}
				kept := rows[:0]
				for _, r := range rows {
					if (group == "" || r["group"] == group) && (topic == "" || r["topic"] == topic) {
						kept = append(kept, r)
					}
				}
				if c.output == "json" {
					return c.printJSON(map[string]any{"subscriptions": kept})
				}
				return c.printTable(kept, subCols...)
			}},
		"show": {args: "ID", summary: "Show a subscription's settings and state.", example: "postbus admin subscriptions show e8YkbxTeFCamqCqLwxa3St", nargs: 1,
			run: one("GET", "")},
		"create": {summary: "Subscribe a group to a topic: with --webhook-url a webhook (the secret is shown once), without it a pull subscription.",
			example: "postbus admin subscriptions create --group billing --topic orders --webhook-url https://billing.internal/hooks/orders --filter 'created || paid'", nargs: 0,
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&group, "group", "", "the consumer group (required)")
				fs.StringVar(&topic, "topic", "", "the topic (required)")
				fs.StringVar(&hook, "webhook-url", "", "the webhook URL; empty: a pull subscription")
				fs.StringVar(&filter, "filter", "", "tag filter, e.g. 'created || paid' (empty: every tag)")
				fs.BoolVar(&ordered, "ordered", false, "deliver each queue's messages one at a time, in order")
				fs.IntVar(&maxRetries, "max-retries", -1, "retries before the dead-letter queue (-1: the broker's default)")
				fs.StringVar(&startFrom, "start-from", "", "earliest, latest or an RFC 3339 time (empty: the broker's default)")
				fs.StringVar(&visibility, "visibility", "", "pull: how long a pulled message is invisible to the group, e.g. 30s")
				fs.StringVar(&format, "format", "", "webhook: raw or cloudevents (binary-mode CloudEvents); empty: raw")
			},
			run: func(c *adminClient, _ []string) error {
				if group == "" || topic == "" {
					return &adminError{exitUsage, "--group and --topic are required"}
				}
				req := map[string]any{"group": group, "topic": topic}
				for k, v := range map[string]string{"url": hook, "filter": filter, "start_from": startFrom, "visibility": visibility, "format": format} {
					if v != "" {
						req[k] = v
					}
				}
				if ordered {
					req["ordered"] = true
				}
				if maxRetries >= 0 {
					req["max_retries"] = maxRetries
				}
				var s map[string]any
				raw, err := c.sendJSON("POST", "/v1/subscriptions", req, &s)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				return c.printFields(s, subFields...)
			}},
		"pause": {args: "ID", summary: "Stop deliveries (and pulls) of a subscription until resumed.", example: "postbus admin subscriptions pause e8YkbxTeFCamqCqLwxa3St", nargs: 1,
			run: one("POST", "/pause")},
		"resume": {args: "ID", summary: "Resume a paused or disabled subscription.", example: "postbus admin subscriptions resume e8YkbxTeFCamqCqLwxa3St", nargs: 1,
			run: one("POST", "/resume")},
		"rotate": {args: "ID", summary: "Give a webhook subscription a new secret (shown once); the old one signs beside it for 24h.",
			example: "postbus admin subscriptions rotate e8YkbxTeFCamqCqLwxa3St", nargs: 1,
			run: one("POST", "/rotate-secret")},
		"delete": {args: "ID", summary: "Delete a subscription.", example: "postbus admin subscriptions delete e8YkbxTeFCamqCqLwxa3St", nargs: 1,
			run: func(c *adminClient, a []string) error {
				if _, err := c.do("DELETE", "/v1/subscriptions/"+pathEsc(a[0]), nil, nil); err != nil {
					return err
				}
				return c.done(map[string]any{"deleted": a[0]}, "deleted subscription "+a[0])
			}},
	}
}

func replicaVerbs() map[string]adminVerb {
	return map[string]adminVerb{
		"list": {summary: "List the members of the broker's replica group: role, last and applied index.",
			example: "postbus admin replicas list --url https://broker-a1:8080", nargs: 0,
			run: func(c *adminClient, _ []string) error {
				var st map[string]any
				raw, err := c.getJSON("/v1/replicas", &st)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				if err := c.printFields(st, column{"Broker", "broker"}, column{"Leader", "leader"}); err != nil {
					return err
				}
				fmt.Fprintln(c.stdout)
				return c.printTable(objects(st["members"]), column{"ID", "id"}, column{"ADDR", "addr"}, column{"ROLE", "role"},
					column{"LAST_INDEX", "last_index"}, column{"APPLIED_INDEX", "applied_index"})
			}},
		"add": {args: "ID ADDR", summary: "Add a member (started with --raft-join) to the replica group; ADDR is its raft address.",
			example: "postbus admin replicas add n4 10.0.0.14:7000", nargs: 2,
			run: func(c *adminClient, a []string) error {
				raw, err := c.sendJSON("POST", "/v1/replicas", map[string]string{"id": a[0], "addr": a[1]}, nil)
				if err != nil {
					return err
				}
				if c.output == "json" && len(raw) > 0 {
					return c.printJSON(raw)
				}
				return c.done(map[string]any{"added": a[0]}, "added replica "+a[0]+" at "+a[1])
			}},
		"remove": {args: "ID", summary: "Remove a member from the replica group.", example: "postbus admin replicas remove n4", nargs: 1,
			run: func(c *adminClient, a []string) error {
				if _, err := c.do("DELETE", "/v1/replicas/"+pathEsc(a[0]), nil, nil); err != nil {
					return err
				}
				return c.done(map[string]any{"removed": a[0]}, "removed replica "+a[0])
			}},
	}
}

func clusterVerbs() map[string]adminVerb {
	return map[string]adminVerb{
		"show": {summary: "Show the brokers a name server (or dev) knows: cluster, address, version, topics, last heartbeat.",
			example: "postbus admin cluster show --url http://namesrv-1:9876", nargs: 0,
			run: func(c *adminClient, _ []string) error {
				var cl map[string]any
				raw, err := c.getJSON("/v1/cluster", &cl)
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(raw)
				}
				return c.printTable(objects(cl["brokers"]), column{"BROKER", "name"}, column{"CLUSTER", "cluster"}, column{"ADDR", "addr"},
					column{"VERSION", "version"}, column{"TOPICS", "topics"}, column{"LAST_HEARTBEAT", "last_heartbeat"})
			}},
	}
}

func transactionVerbs() map[string]adminVerb {
	var state string
	settle := func(verb string) func(c *adminClient, a []string) error {
		return func(c *adminClient, a []string) error {
			var res map[string]any
			raw, err := c.sendJSON("POST", "/v1/transactions/"+pathEsc(a[0])+"/"+verb, nil, &res)
			if err != nil {
				return err
			}
			if c.output == "json" {
				return c.printJSON(raw)
			}
			return c.printFields(res, column{"Transaction", "transaction_id"}, column{"Message", "msg_id"}, column{"State", "state"},
				column{"Topic", "topic"}, column{"Queue", "queue_id"}, column{"Offset", "queue_offset"})
		}
	}
	return map[string]adminVerb{
		"list": {summary: "List transactional messages (by default the prepared ones, not yet committed or rolled back).",
			example: "postbus admin transactions list --state prepared", nargs: 0,
			flags: func(fs *flag.FlagSet) { fs.StringVar(&state, "state", "prepared", "which transactions to list") },
			run: func(c *adminClient, _ []string) error {
				rows, err := c.getAll("/v1/transactions?state="+url.QueryEscape(state), "transactions")
				if err != nil {
					return err
				}
				if c.output == "json" {
					return c.printJSON(map[string]any{"transactions": rows})
				}
				return c.printTable(rows, column{"TRANSACTION", "transaction_id"}, column{"MSG_ID", "msg_id"}, column{"TOPIC", "topic"},
					column{"PRODUCER_GROUP", "producer_group"}, column{"STATE", "state"}, column{"CHECKS", "checks"}, column{"PREPARED", "prepared_at"})
			}},
		"commit": {args: "TRANSACTION_ID", summary: "Commit a prepared transactional message: it is delivered.",
			example: "postbus admin transactions commit 9f2c…", nargs: 1, run: settle("commit")},
		"rollback": {args: "TRANSACTION_ID", summary: "Roll back a prepared transactional message: it is never delivered.",
			example: "postbus admin transactions rollback 9f2c…", nargs: 1, run: settle("rollback")},
	}
}

// stdinPiped says whether standard input is a pipe or a file, not a
// terminal or /dev/null: a body to read.
func stdinPiped() bool {
	st, err := os.Stdin.Stat()
	if err != nil {
		return false
	}
	return st.Mode()&(os.ModeNamedPipe) != 0 || st.Mode().IsRegular()
}
