package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes of `postbus admin`, for scripts to branch on. They are listed
// in adminUsage; keep the two together.
const (
	exitOK          = 0
	exitFailed      = 1 // anything not below: a 5xx, an answer that could not be read
	exitUsage       = 2 // the command line was wrong
	exitNotFound    = 3 // 404: no such topic, group, subscription, message
	exitRefused     = 4 // another 4xx: the broker refused the request as given
	exitAuth        = 5 // 401 or 403
	exitUnavailable = 6 // no connection, a timeout, 502, 503, 504 or 507: try again later
)

const adminUsage = `Usage: postbus admin <noun> <verb> [flags] [arguments]

Operate a running bus through its HTTP API, as RocketMQ's mqadmin.

Nouns and verbs:
  topics          list | show TOPIC | create TOPIC | grow TOPIC | delete TOPIC
  groups          list | show GROUP | reset GROUP
  messages        get MSG_ID | key TOPIC KEY | trace MSG_ID | send TOPIC
  dlq             list GROUP | show GROUP MSG_ID | redrive GROUP | purge GROUP
  subscriptions   list | show ID | create | pause ID | resume ID | rotate ID | delete ID
  replicas        list | add ID ADDR | remove ID
  transactions    list | commit ID | rollback ID (brokers with transactional messages)
  cluster         show (the brokers a name server, or dev, knows)

"postbus admin <noun> --help" lists a noun's verbs; "postbus admin <noun> <verb> --help"
a verb's flags, with an example.

Flags of every verb (also as environment variables):
  --url URL        the broker (or name server) to talk to; POSTBUS_URL (default http://127.0.0.1:8080)
  --token TOKEN    bearer token (an admin token sees everything); POSTBUS_TOKEN
  --tls-ca FILE    PEM certificates to trust for https URLs, beside the system's; POSTBUS_TLS_CA
  -o table|json    aligned tables for people (default), or the API's JSON for scripts
  --timeout D      how long one request may take (default 30s)

Problems the broker answers are printed on stderr as "STATUS code: detail".

Exit codes:
  0  done
  1  failed otherwise (a 5xx, an answer that could not be read)
  2  usage: the command line was wrong
  3  not found (404): no such topic, group, subscription or message
  4  refused (another 4xx): the request as given was not accepted
  5  unauthorized or forbidden (401, 403): check --token
  6  unavailable: no connection, a timeout, 502, 503, 504 or 507; try again later

Example:
  export POSTBUS_URL=https://bus.internal:8080 POSTBUS_TOKEN=$(postbus token --scope admin --ttl 1h)
  postbus admin topics list
  postbus admin groups show billing -o json | jq .lag
`

// adminError is a failure with the exit code it maps to.
type adminError struct {
	code int
	msg  string
}

func (e *adminError) Error() string { return e.msg }

// exitCode returns the exit code for an error from admin.
func adminExitCode(err error) int {
	var ae *adminError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.As(err, &ae):
		return ae.code
	}
	return exitFailed
}

// runAdmin is `postbus admin`: it prints what went wrong itself and
// returns the exit code.
func runAdmin(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := admin(ctx, args, stdout, stderr)
	var ae *adminError
	if errors.As(err, &ae) {
		fmt.Fprintf(stderr, "postbus admin: %s\n", ae.msg)
	} else if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errUsage) {
		fmt.Fprintf(stderr, "postbus admin: %v\n", err)
	}
	return adminExitCode(err)
}

// adminVerb is one verb of a noun.
type adminVerb struct {
	args    string // the positional arguments, for the usage line
	summary string
	example string
	nargs   int                    // exact count of positional arguments; -1: any
	flags   func(fs *flag.FlagSet) // the verb's own flags
	run     func(c *adminClient, args []string) error
}

func admin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, adminUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	// Flags given before the noun (postbus admin --url X topics list) are
	// the common ones, each with a value: they are parsed after the verb.
	var lead []string
	for len(args) > 0 && strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		n := 2
		if strings.Contains(args[0], "=") {
			n = 1
		}
		n = min(n, len(args))
		lead, args = append(lead, args[:n]...), args[n:]
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, adminUsage)
		return errUsage
	}
	if len(args) > 1 {
		args = append(append(args[:2:2], lead...), args[2:]...)
	}
	nouns := adminNouns()
	noun, ok := nouns[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "postbus admin: unknown noun %q\n\n%s", args[0], adminUsage)
		return errUsage
	}
	verbNames := make([]string, 0, len(noun))
	for v := range noun {
		verbNames = append(verbNames, v)
	}
	slices.Sort(verbNames)
	nounHelp := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: postbus admin %s <verb> [flags] [arguments]\n\nVerbs:\n", args[0])
		for _, v := range verbNames {
			fmt.Fprintf(w, "  %-8s %-18s %s\n", v, noun[v].args, noun[v].summary)
		}
		fmt.Fprintf(w, "\n\"postbus admin %s <verb> --help\" for a verb's flags and an example; \"postbus admin --help\" for the\nflags every verb takes and the exit codes.\n", args[0])
	}
	if len(args) == 1 || args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		nounHelp(stdout)
		if len(args) == 1 {
			return errUsage
		}
		return nil
	}
	verb, ok := noun[args[1]]
	if !ok {
		fmt.Fprintf(stderr, "postbus admin %s: unknown verb %q\n\n", args[0], args[1])
		nounHelp(stderr)
		return errUsage
	}
	name := "postbus admin " + args[0] + " " + args[1]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &adminClient{ctx: ctx, stdout: stdout}
	fs.StringVar(&c.base, "url", "http://127.0.0.1:8080", "the broker (or name server) to talk to")
	fs.StringVar(&c.token, "token", "", "bearer token")
	fs.StringVar(&c.caFile, "tls-ca", "", "PEM certificates to trust for https URLs, beside the system's")
	fs.StringVar(&c.output, "o", "table", "table or json")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long one request may take")
	if verb.flags != nil {
		verb.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: %s [flags] %s\n\n%s\n\nExample:\n  %s\n\nFlags (--url, --token, --tls-ca also as POSTBUS_URL, POSTBUS_TOKEN, POSTBUS_TLS_CA):\n",
			name, verb.args, verb.summary, verb.example)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	for _, env := range []struct{ flag, env string }{{"url", "POSTBUS_URL"}, {"token", "POSTBUS_TOKEN"}, {"tls-ca", "POSTBUS_TLS_CA"}} {
		if v, ok := os.LookupEnv(env.env); ok && v != "" {
			if err := fs.Set(env.flag, v); err != nil {
				return fmt.Errorf("%s: %w", env.env, err)
			}
		}
	}
	pos, err := parseInterspersed(fs, args[2:])
	if err != nil {
		return err
	}
	if verb.nargs >= 0 && len(pos) != verb.nargs {
		fmt.Fprintf(stderr, "%s takes %d argument(s) (%s), got %d: %q\n", name, verb.nargs, verb.args, len(pos), pos)
		return errUsage
	}
	if c.output != "table" && c.output != "json" {
		fmt.Fprintf(stderr, "%s: -o %q: want table or json\n", name, c.output)
		return errUsage
	}
	if c.timeout <= 0 {
		fmt.Fprintf(stderr, "%s: --timeout %s: want a positive duration, like 30s\n", name, c.timeout)
		return errUsage
	}
	if err := c.init(); err != nil {
		return err
	}
	return verb.run(c, pos)
}

// parseInterspersed parses flags anywhere among the positional arguments
// (postbus admin topics show orders -o json), returning the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		rest := fs.Args()
		if rest[0] == "--" {
			return append(pos, rest[1:]...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// adminClient talks to one broker for one command.
type adminClient struct {
	ctx     context.Context
	stdout  io.Writer
	base    string
	token   string
	caFile  string
	output  string
	timeout time.Duration
	http    *http.Client
}

func (c *adminClient) init() error {
	u, err := url.Parse(c.base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return &adminError{exitUsage, fmt.Sprintf("--url %q: want http://host:port or https://host:port", c.base)}
	}
	c.base = strings.TrimRight(c.base, "/")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if c.caFile != "" {
		pool, err := loadCAPool(c.caFile)
		if err != nil {
			return &adminError{exitUsage, fmt.Sprintf("--tls-ca: %v", err)}
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c.http = &http.Client{Transport: tr, Timeout: c.timeout,
		// A redirect would carry the token elsewhere: the API never sends one.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return nil
}

// loadCAPool returns the system's roots with the PEM certificates of file
// added.
func loadCAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// do sends a request and returns the answer's body for a 2xx; any other
// answer becomes an adminError with the problem's code and detail.
func (c *adminClient) do(method, path string, body any, header http.Header) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			rd = bytes.NewReader(b)
		default:
			j, err := json.Marshal(b)
			if err != nil {
				return nil, err
			}
			rd = bytes.NewReader(j)
		}
	}
	req, err := http.NewRequestWithContext(c.ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil && header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &adminError{exitUnavailable, fmt.Sprintf("%s %s: %v", method, c.base+path, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, &adminError{exitUnavailable, fmt.Sprintf("%s %s: reading the answer: %v", method, c.base+path, err)}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return data, nil
	}
	var p struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
		Field  string `json:"field"`
	}
	msg := fmt.Sprintf("%s %s: %d", method, path, resp.StatusCode)
	if json.Unmarshal(data, &p) == nil && p.Code != "" {
		msg = fmt.Sprintf("%d %s: %s", resp.StatusCode, p.Code, p.Detail)
		if p.Field != "" {
			msg += " (field " + p.Field + ")"
		}
	} else if len(data) > 0 {
		msg += ": " + strings.TrimSpace(string(data[:min(len(data), 512)]))
	}
	return nil, &adminError{codeForStatus(resp.StatusCode), msg}
}

func codeForStatus(status int) int {
	switch {
	case status == http.StatusNotFound:
		return exitNotFound
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return exitAuth
	case status == http.StatusBadGateway || status == http.StatusServiceUnavailable ||
		status == http.StatusGatewayTimeout || status == http.StatusInsufficientStorage:
		return exitUnavailable
	case status >= 400 && status < 500:
		return exitRefused
	}
	return exitFailed
}

// getJSON gets path and decodes it into v; raw is the answer as sent.
func (c *adminClient) getJSON(path string, v any) (raw []byte, err error) {
	return c.sendJSON("GET", path, nil, v)
}

func (c *adminClient) sendJSON(method, path string, body, v any) ([]byte, error) {
	raw, err := c.do(method, path, body, nil)
	if err != nil {
		return nil, err
	}
	if v != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, v); err != nil {
			return nil, &adminError{exitFailed, fmt.Sprintf("%s %s: the answer is not the JSON expected: %v", method, path, err)}
		}
	}
	return raw, nil
}

// getAll follows next_cursor through every page of a list, with the items
// of each page under key; at most maxPages pages.
func (c *adminClient) getAll(path, key string) ([]map[string]any, error) {
	const maxPages = 1000
	all := []map[string]any{} // "[]" in -o json, not null
	cursor := ""
	for range maxPages {
		p := path
		if cursor != "" {
			sep := "?"
			if strings.Contains(p, "?") {
				sep = "&"
			}
			p += sep + "cursor=" + url.QueryEscape(cursor)
		}
		var page map[string]json.RawMessage
		if _, err := c.getJSON(p, &page); err != nil {
			return nil, err
		}
		var items []map[string]any
		if raw, ok := page[key]; ok {
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, &adminError{exitFailed, fmt.Sprintf("GET %s: %q is not a list: %v", p, key, err)}
			}
		}
		all = append(all, items...)
		var next string
		if raw, ok := page["next_cursor"]; ok {
			if err := json.Unmarshal(raw, &next); err != nil {
				return nil, &adminError{exitFailed, fmt.Sprintf("GET %s: next_cursor: %v", p, err)}
			}
		}
		if next == "" {
			return all, nil
		}
		cursor = next
	}
	return nil, &adminError{exitFailed, fmt.Sprintf("GET %s: more than %d pages", path, maxPages)}
}

// printJSON writes v (or raw JSON) indented.
func (c *adminClient) printJSON(v any) error {
	var out []byte
	var err error
	if raw, ok := v.([]byte); ok {
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return &adminError{exitFailed, fmt.Sprintf("the answer is not JSON: %v", err)}
		}
		out = buf.Bytes()
	} else if out, err = json.MarshalIndent(v, "", "  "); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", out)
	return err
}

// column is one column of a table: a header and the JSON field it shows.
type column struct{ header, field string }

// printTable writes rows as an aligned table with the given columns.
func (c *adminClient) printTable(rows []map[string]any, cols ...column) error {
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	hs := make([]string, len(cols))
	for i, col := range cols {
		hs[i] = col.header
	}
	fmt.Fprintln(tw, strings.Join(hs, "\t"))
	for _, r := range rows {
		vs := make([]string, len(cols))
		for i, col := range cols {
			vs[i] = cell(r[col.field])
		}
		fmt.Fprintln(tw, strings.Join(vs, "\t"))
	}
	return tw.Flush()
}

// printFields writes one object's fields as "name: value" lines.
func (c *adminClient) printFields(obj map[string]any, fields ...column) error {
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	for _, f := range fields {
		v, ok := obj[f.field]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f.header, cell(v))
	}
	return tw.Flush()
}

// cell formats a JSON value for a table.
func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		if x == "" {
			return "-"
		}
		// One line per row, whatever the value holds.
		return strings.NewReplacer("\n", `\n`, "\t", " ", "\r", `\r`).Replace(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = cell(e)
		}
		return strings.Join(parts, ",")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// pathEsc escapes one path segment (topics like %DLQ%billing included).
func pathEsc(s string) string { return url.PathEscape(s) }

// confirm refuses a destructive verb without --yes.
func confirm(yes bool, what string) error {
	if !yes {
		return &adminError{exitUsage, what + " cannot be undone: give --yes to do it"}
	}
	return nil
}
