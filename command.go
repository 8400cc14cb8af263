package webhookguard

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "webhook",
		Usage: "sign|send|inbox|replay|test [flags]",
		Short: "Signs or sends test webhook deliveries (webhookguard)",
		Long: `
Tools for trying a webhook_guard route without a real sender.

  caddy webhook sign --scheme kapso --secret S [--file body.json]
      prints the signature header(s) for a body (standard input by default).

  caddy webhook send --url http://localhost:8080/webhooks/kapso --secret S
      builds a realistic sample delivery (a Kapso v2 event, a Kapso batch
      with --batch N, or a raw Meta payload with --meta), or reads --file,
      signs it, POSTs it and prints the answer. --sample message.incoming
      (or message.report, form.submitted) sends the second platform's
      event envelope. --repeat sends the same delivery twice, to see
      deduplication at work.

  caddy webhook inbox [--handler H] [--status S]
      prints the running Caddy's delivery history: a summary per handler
      and the latest events (from its admin API; --address to override).

  caddy webhook replay <event id>
  caddy webhook replay --dead --handler H [--since 2h] [--until T] [--event E] [--q TEXT]
      delivers a delivered or dead event again, or every dead event of H
      that the filter selects (--failed: retry now the failed ones that
      wait for their next attempt).

  caddy webhook test --handler H
      sends a signed sample event through H's own route (Send Test Event):
      verification, dedupe, the event filter and the inbox all run on it.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(newSignCommand(), newSendCommand(), newInboxCommand(), newReplayCommand(), newTestCommand())
		},
	})
}

// signOptions says how to sign a body.
type signOptions struct {
	scheme, secret                      string
	header, prefix, encoding, algorithm string
	id                                  string
	timestamp                           int64
}

func (o *signOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.scheme, "scheme", "", "kapso, meta, hmac or standard (default kapso; meta with --meta)")
	f.StringVar(&o.secret, "secret", "", "the signing secret (required)")
	f.StringVar(&o.header, "header", "X-Signature", "hmac: the signature header")
	f.StringVar(&o.prefix, "prefix", "", "hmac: text before the signature")
	f.StringVar(&o.encoding, "encoding", "hex", "hmac: hex or base64")
	f.StringVar(&o.algorithm, "algorithm", "sha256", "hmac: sha256, sha512 or sha1")
	f.StringVar(&o.id, "id", "", "standard: webhook-id (default random)")
	f.Int64Var(&o.timestamp, "timestamp", 0, "standard: webhook-timestamp in Unix seconds (default now)")
}

// signHeaders returns the headers that sign body under o.
func (o *signOptions) signHeaders(body []byte) (http.Header, error) {
	if o.secret == "" {
		return nil, errors.New("--secret is required")
	}
	h := http.Header{}
	switch strings.ToLower(o.scheme) {
	case "", schemeKapso:
		h.Set(headerKapsoSignature, hex.EncodeToString(hmacSum(sha256.New, []byte(o.secret), body)))
	case schemeMeta:
		h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(hmacSum(sha256.New, []byte(o.secret), body)))
	case schemeHMAC:
		alg, err := parseAlgorithm(o.algorithm)
		if err != nil {
			return nil, err
		}
		sum := hmacSum(alg.newFunc(), []byte(o.secret), body)
		sig := hex.EncodeToString(sum)
		if strings.EqualFold(o.encoding, "base64") {
			sig = base64.StdEncoding.EncodeToString(sum)
		}
		h.Set(o.header, o.prefix+sig)
	case schemeStandard:
		key, err := decodeStandardSecret(o.secret)
		if err != nil {
			return nil, err
		}
		id, ts := o.id, o.timestamp
		if id == "" {
			id = randomID("msg_")
		}
		if ts == 0 {
			ts = time.Now().Unix()
		}
		tsText := strconv.FormatInt(ts, 10)
		content := append([]byte(id+"."+tsText+"."), body...)
		h.Set("Webhook-Id", id)
		h.Set("Webhook-Timestamp", tsText)
		h.Set("Webhook-Signature", "v1,"+base64.StdEncoding.EncodeToString(hmacSum(sha256.New, key, content)))
	default:
		return nil, fmt.Errorf("unknown scheme %q (want kapso, meta, hmac or standard)", o.scheme)
	}
	return h, nil
}

func hmacSum(newHash func() hash.Hash, key, body []byte) []byte {
	m := hmac.New(newHash, key)
	m.Write(body)
	return m.Sum(nil)
}

func readBodyArg(file string, stdin io.Reader) ([]byte, error) {
	if file == "" || file == "-" {
		return io.ReadAll(stdin)
	}
	return os.ReadFile(file)
}

func printHeaders(w io.Writer, h http.Header) {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(w, "%s: %s\n", k, h.Get(k))
	}
}

func newSignCommand() *cobra.Command {
	var o signOptions
	var file string
	cmd := &cobra.Command{
		Use:   "sign --scheme kapso|meta|hmac|standard --secret S [--file F]",
		Short: "Prints the signature header(s) for a body",
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, err := readBodyArg(file, cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("reading the body: %w", err)
			}
			h, err := o.signHeaders(body)
			if err != nil {
				return err
			}
			printHeaders(cmd.OutOrStdout(), h)
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&file, "file", "-", "the body to sign (- for standard input)")
	return cmd
}

// sendOptions describes the sample delivery to send.
type sendOptions struct {
	signOptions
	url     string
	event   string
	batch   int
	file    string
	meta    bool
	sample  string
	repeat  bool
	key     string
	timeout time.Duration
}

func newSendCommand() *cobra.Command {
	var o sendOptions
	cmd := &cobra.Command{
		Use:   "send --url U --secret S [--scheme …] [--event E] [--batch N] [--file F] [--meta] [--sample E] [--repeat]",
		Short: "Builds or reads a delivery, signs it, POSTs it and prints the answer",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.OutOrStdout())
		},
	}
	o.addFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "where to POST (required)")
	f.StringVar(&o.event, "event", "", "X-Webhook-Event of a Kapso sample or --file (default whatsapp.message.received); with --meta: message or status")
	f.IntVar(&o.batch, "batch", 0, "send a Kapso batch of N received messages")
	f.StringVar(&o.file, "file", "", "send this file as the body instead of a sample")
	f.BoolVar(&o.meta, "meta", false, "send a raw Meta payload (signed with the meta scheme)")
	f.StringVar(&o.sample, "sample", "", "send the second platform's event envelope: "+strings.Join(platformEvents, ", ")+
		" (signed in X-Webhook-Signature, hex, as it signs)")
	f.BoolVar(&o.repeat, "repeat", false, "send the same delivery twice")
	f.StringVar(&o.key, "key", "", "X-Idempotency-Key (default random; never set with --meta)")
	f.DurationVar(&o.timeout, "timeout", 15*time.Second, "how long to wait for each answer")
	return cmd
}

// build returns the body and headers of the delivery.
func (o *sendOptions) build() ([]byte, http.Header, error) {
	switch {
	case o.batch > 0 && o.meta:
		return nil, nil, errors.New("--batch builds a Kapso batch, and Meta does not batch deliveries: use --batch or --meta, not both")
	case o.batch > 0 && o.file != "":
		return nil, nil, errors.New(`--batch builds a sample batch, and --file sends the file as it is (a Kapso batch file is recognised by its "batch": true): use one of them`)
	case o.sample != "" && (o.batch > 0 || o.meta || o.file != "" || o.event != ""):
		return nil, nil, errors.New("--sample builds the second platform's envelope (its event is the envelope's type): use it without --batch, --meta, --file or --event")
	case o.sample != "" && !slices.Contains(platformEvents, o.sample):
		return nil, nil, fmt.Errorf("--sample must be one of %s", strings.Join(platformEvents, ", "))
	}
	now := time.Now()
	var body []byte
	var err error
	event := o.event
	switch {
	case o.file != "":
		if body, err = os.ReadFile(o.file); err != nil {
			return nil, nil, fmt.Errorf("reading --file: %w", err)
		}
	case o.meta:
		body = metaSample(event, now)
	case o.sample != "":
		body = platformSample(o.sample, now)
	case o.batch > 0:
		body = kapsoBatchSample(o.batch, now)
	default:
		if event == "" {
			event = "whatsapp.message.received"
		}
		body = kapsoSample(event, now)
	}
	if o.scheme == "" && o.meta {
		o.scheme = schemeMeta
	}
	h, err := o.signHeaders(body)
	if err != nil {
		return nil, nil, err
	}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", "caddy-webhook-send")
	if !o.meta && o.sample == "" { // the second platform sends no event header and no idempotency key
		if event == "" {
			// A Kapso delivery always names its event; the gateway derives
			// the content key of message events from it.
			event = "whatsapp.message.received"
		}
		h.Set(headerEvent, event)
		h.Set("X-Webhook-Payload-Version", "v2")
		key := o.key
		if key == "" {
			key = randomUUID()
		}
		h.Set(headerIdempotencyKey, key)
		if o.batch > 0 && o.file == "" {
			h.Set(headerBatch, "true")
			h.Set(headerBatchSize, strconv.Itoa(o.batch))
		}
	}
	return body, h, nil
}

func (o *sendOptions) run(out io.Writer) error {
	if o.url == "" {
		return errors.New("--url is required")
	}
	if !strings.Contains(o.url, "://") {
		o.url = "http://" + o.url
	}
	body, h, err := o.build()
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: o.timeout}
	times := 1
	if o.repeat {
		times = 2
	}
	failed := false
	for i := range times {
		req, err := http.NewRequest(http.MethodPost, o.url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header = h.Clone()
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("POST %s: %w", o.url, err)
		}
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if times > 1 {
			fmt.Fprintf(out, "-- delivery %d of %d\n", i+1, times)
		}
		fmt.Fprintf(out, "%s %s\n", resp.Proto, resp.Status)
		for _, k := range []string{headerDuplicate, "Retry-After", "Content-Type"} {
			if v := resp.Header.Get(k); v != "" {
				fmt.Fprintf(out, "%s: %s\n", k, v)
			}
		}
		fmt.Fprintf(out, "\n%s\n", bytes.TrimRight(answer, "\n"))
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			failed = true
		}
	}
	if failed {
		return errors.New("the gateway did not accept every delivery")
	}
	return nil
}
