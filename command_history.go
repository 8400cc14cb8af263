package webhookguard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"github.com/webhookguard/webhookguard/internal/inbox"
)

// historyOptions are the flags shared by the history commands: where the
// running Caddy's admin API is, as caddy reload and caddy stop find it.
type historyOptions struct {
	address, config, adapter string
}

func (o *historyOptions) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.address, "address", "", "the admin API's address (default: from --config, else localhost:2019)")
	f.StringVarP(&o.config, "config", "c", "", "a config file to read the admin address from")
	f.StringVarP(&o.adapter, "adapter", "a", "", "the adapter of --config")
}

// call makes one history request to the admin API and decodes the answer
// into out; an error answer becomes the error, with its message.
func (o *historyOptions) call(method, uri string, out any) error {
	return o.callWith(method, uri, nil, out)
}

// callWith is call with a JSON request body.
func (o *historyOptions) callWith(method, uri string, body []byte, out any) error {
	addr, err := caddycmd.DetermineAdminAPIAddress(o.address, nil, o.config, o.adapter)
	if err != nil {
		return err
	}
	var hdr http.Header
	if method != http.MethodGet {
		hdr = http.Header{headerFromPage: {"cli"}}
	}
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, "/webhook_guard"+uri, hdr, reader)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e errorBody
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return fmt.Errorf("%s: %s", terminalSafe(e.Error), terminalSafe(e.Message))
		}
		return fmt.Errorf("admin API answered %d: %s", resp.StatusCode, terminalSafe(string(b)))
	}
	return json.Unmarshal(b, out)
}

func newInboxCommand() *cobra.Command {
	var o historyOptions
	var handler, status, text string
	var limit int
	cmd := &cobra.Command{
		Use:   "inbox [--handler H] [--status S] [--q TEXT]",
		Short: "Prints the delivery history of the running Caddy: a summary per handler and the latest events",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s struct{ Handlers []handlerSummary }
			if err := o.call(http.MethodGet, "/inbox", &s); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			printSummaries(w, s.Handlers)
			for _, h := range s.Handlers {
				if handler != "" && h.Handler != handler {
					continue
				}
				q := url.Values{"handler": {h.Handler}, "limit": {fmt.Sprint(limit)}}
				if status != "" {
					q.Set("status", status)
				}
				if text != "" {
					q.Set("q", text)
				}
				var l struct{ Events []eventView }
				if err := o.call(http.MethodGet, "/inbox/events?"+q.Encode(), &l); err != nil {
					return err
				}
				fmt.Fprintf(w, "\n%s: latest %d\n", h.Handler, len(l.Events))
				printEvents(w, l.Events)
			}
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.AddCommand(newInboxCheckCommand(), newInboxSalvageCommand(), newInboxMoveCommand(), newInboxBackupCommand(),
		newInboxCompactCommand(), newInboxEraseCommand())
	cmd.Flags().StringVar(&handler, "handler", "", "only this handler's events (default: every handler's)")
	cmd.Flags().StringVar(&status, "status", "", "only events in this state: pending, failed, delivered, dead or damaged (in memory: delivered, failed, duplicate, …)")
	cmd.Flags().StringVar(&text, "q", "", "only events whose id, idempotency key, conversation or body contains this")
	cmd.Flags().IntVar(&limit, "limit", 20, "events per handler")
	return cmd
}

func newInboxCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check <file>",
		Short: "Reports what is readable in an inbox file, without changing it (Caddy must not have it open)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := inbox.Check(args[0])
			if err != nil {
				return err
			}
			printReport(cmd.OutOrStdout(), r)
			if r.OpenError != "" || !r.Walked || r.Unreadable > 0 || r.NoBody > 0 {
				return fmt.Errorf("%s is damaged: caddy webhook inbox salvage %s --output <new file> copies the %d readable events",
					args[0], args[0], r.Readable())
			}
			return nil
		},
	}
}

func newInboxSalvageCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "salvage <file> --output <new file>",
		Short: "Copies every readable event of a damaged inbox file into a new file",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return errors.New("--output is required: salvage writes a new file and never changes the damaged one")
			}
			r, err := inbox.Salvage(args[0], output)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			printReport(w, r)
			fmt.Fprintf(w, "wrote %d events to %s: with Caddy stopped, move %s aside and put %s in its place\n",
				r.Written, output, args[0], output)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "the new file to write (must not exist)")
	return cmd
}

func newInboxMoveCommand() *cobra.Command {
	var o historyOptions
	var from, to string
	cmd := &cobra.Command{
		Use:   "move --from <queue> --to <handler>",
		Short: "Moves the events of a queue no handler serves (an orphaned queue) to a handler's queue",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return errors.New("--from and --to are both required")
			}
			var r struct{ Moved int }
			if err := o.call(http.MethodPost, "/inbox/move?"+url.Values{"from": {from}, "to": {to}}.Encode(), &r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d events moved from %s to %s\n", r.Moved, terminalSafe(from), terminalSafe(to))
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&from, "from", "", "the orphaned queue")
	cmd.Flags().StringVar(&to, "to", "", "the handler whose queue takes its events")
	return cmd
}

func newInboxBackupCommand() *cobra.Command {
	var o historyOptions
	var handler, output string
	cmd := &cobra.Command{
		Use:   "backup --handler H --output <file>",
		Short: "Writes a consistent copy of a running Caddy's inbox file (the one holding H's queue)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if handler == "" || output == "" {
				return errors.New("--handler and --output are both required")
			}
			n, err := o.download("/inbox/backup?"+url.Values{"handler": {handler}}.Encode(), output)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %d bytes to %s: to restore, stop Caddy and put it in the inbox file's place\n", n, output)
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&handler, "handler", "", "a handler whose inbox file to copy")
	cmd.Flags().StringVarP(&output, "output", "o", "", "the file to write (must not exist)")
	return cmd
}

func newInboxCompactCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "compact <file>",
		Short: "Rewrites an inbox file (Caddy stopped) to the size of what it holds; bbolt never shrinks a file itself",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			before, after, err := inbox.Compact(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s before, %s after\n", args[0], humanize.IBytes(uint64(before)), humanize.IBytes(uint64(after)))
			return nil
		},
	}
}

func newInboxEraseCommand() *cobra.Command {
	var o historyOptions
	var handler, id, orderKey, phone string
	cmd := &cobra.Command{
		Use:   "erase --id ID | --handler H (--order-key K | --phone P)",
		Short: "Erases events (body, headers, dedupe keys) from a running Caddy's inbox file, free pages included",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			body, _ := json.Marshal(map[string]string{"id": id, "handler": handler, "order_key": orderKey, "phone": phone})
			var r struct{ Erased int }
			if err := o.callWith(http.MethodPost, "/inbox/erase", body, &r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d events erased\n", r.Erased)
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&id, "id", "", "one event's id")
	cmd.Flags().StringVar(&handler, "handler", "", "with --order-key or --phone: the handler whose inbox to erase from")
	cmd.Flags().StringVar(&orderKey, "order-key", "", "every event of this order key (a conversation, as the history shows it)")
	cmd.Flags().StringVar(&phone, "phone", "", "every event whose body holds this phone number or BSUID")
	return cmd
}

// download writes the admin API's answer to uri into a new file: to a
// temporary name first, fsynced, then renamed, so that a cut-off copy
// never takes the file's name.
func (o *historyOptions) download(uri, output string) (int64, error) {
	if _, err := os.Stat(output); err == nil {
		return 0, fmt.Errorf("%s exists already", output)
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(o.address, nil, o.config, o.adapter)
	if err != nil {
		return 0, err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, "/webhook_guard"+uri, nil, nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		b, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return 0, fmt.Errorf("%s: %s", terminalSafe(e.Error), terminalSafe(e.Message))
		}
		return 0, fmt.Errorf("admin API answered %d", resp.StatusCode)
	}
	tmp := output + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, resp.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, output)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return 0, err
	}
	return n, nil
}

// printReport says what Check or Salvage found.
func printReport(w io.Writer, r *inbox.Report) {
	if r.OpenError != "" {
		fmt.Fprintf(w, "bbolt could not open the file: %s\n", r.OpenError)
	}
	switch {
	case r.Walked:
		fmt.Fprintln(w, "every bucket was read to its end")
	case r.PageScan:
		fmt.Fprintln(w, "the file could not be read through bbolt to its end: it was read page by page")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tPENDING\tDELIVERED\tDEAD\tDAMAGED")
	for _, q := range slices.Sorted(maps.Keys(r.Events)) {
		c := r.Events[q]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\n", terminalSafe(q), c[inbox.Pending], c[inbox.Delivered], c[inbox.Dead], c[inbox.Damaged])
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d events readable, %d records unreadable, %d events without their body\n", r.Readable(), r.Unreadable, r.NoBody)
}

func newReplayCommand() *cobra.Command {
	var o historyOptions
	var f struct {
		handler, since, until, event, q string
		dead, failed                    bool
	}
	cmd := &cobra.Command{
		Use:   "replay <event id> | --dead|--failed --handler H [--since 2h] [--until T] [--event E] [--q TEXT]",
		Short: "Delivers a delivered or dead event again, or every dead (or failed) event of a handler that a filter selects",
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			switch {
			case (f.dead || f.failed) && len(args) == 0:
				if f.dead && f.failed {
					return errors.New("--dead replays dead events, --failed retries now the failed ones waiting: give one of them")
				}
				if f.handler == "" {
					return errors.New("--dead and --failed need --handler: the handler whose events to replay")
				}
				q := url.Values{"handler": {f.handler}, "status": {"dead"}}
				if f.failed {
					q.Set("status", "failed")
				}
				for k, v := range map[string]string{"since": f.since, "until": f.until, "event": f.event, "q": f.q} {
					if v != "" {
						q.Set(k, v)
					}
				}
				var r struct{ Replayed int }
				if err := o.call(http.MethodPost, "/inbox/replay?"+q.Encode(), &r); err != nil {
					return err
				}
				fmt.Fprintf(w, "%d %s events of %s queued again\n", r.Replayed, q.Get("status"), terminalSafe(f.handler))
			case !f.dead && !f.failed && len(args) == 1:
				var r struct{ Event eventView }
				if err := o.call(http.MethodPost, "/inbox/events/"+url.PathEscape(args[0])+"/replay", &r); err != nil {
					return err
				}
				fmt.Fprintf(w, "%s queued again (attempt %d next)\n", terminalSafe(r.Event.ID), r.Event.Attempts+1)
			default:
				return errors.New("give one event id, or --dead (or --failed) with --handler")
			}
			return nil
		},
	}
	o.addFlags(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.handler, "handler", "", "with --dead or --failed: the handler")
	fl.BoolVar(&f.dead, "dead", false, "replay the dead events of --handler that the filter selects")
	fl.BoolVar(&f.failed, "failed", false, "retry now the failed events of --handler waiting for their next attempt")
	fl.StringVar(&f.since, "since", "", "only events received since: a duration back from now (2h) or an RFC 3339 time")
	fl.StringVar(&f.until, "until", "", "only events received before: a duration back from now or an RFC 3339 time")
	fl.StringVar(&f.event, "event", "", "only events of this type")
	fl.StringVar(&f.q, "q", "", "only events whose id, idempotency key, conversation or body contains this")
	return cmd
}

func newTestCommand() *cobra.Command {
	var o historyOptions
	var handler string
	cmd := &cobra.Command{
		Use:   "test --handler H",
		Short: "Sends a signed sample event through a handler's own route (Send Test Event) and prints the answer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if handler == "" {
				return errors.New("--handler is required (caddy webhook inbox lists the handlers)")
			}
			var r struct {
				Event        string          `json:"event"`
				AnswerStatus int             `json:"answer_status"`
				Answer       json.RawMessage `json:"answer"`
			}
			if err := o.call(http.MethodPost, "/inbox/test?"+url.Values{"handler": {handler}}.Encode(), &r); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "test %s sent to %s: the route answered %d %s\n", terminalSafe(r.Event),
				terminalSafe(handler), r.AnswerStatus, terminalSafe(string(r.Answer)))
			if r.AnswerStatus < 200 || r.AnswerStatus > 299 {
				return errors.New("the route did not accept the test event")
			}
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&handler, "handler", "", "the handler to test (required)")
	return cmd
}

func printSummaries(w io.Writer, hs []handlerSummary) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLER\tKIND\tTOTAL\tDELIVERED\tPENDING\tDEAD\tDAMAGED\tFAILED\tDUPLICATE\tIGNORED\tREFUSED\tRETRY LATER\tSUCCESS\tOLDEST PENDING")
	for _, h := range hs {
		kind, rate := "memory", "-"
		if h.Inbox {
			kind = "inbox"
		}
		if h.SuccessRate != nil {
			rate = fmt.Sprintf("%.1f%%", 100**h.SuccessRate)
		}
		oldest := "-"
		if h.OldestPendingS > 0 {
			oldest = (time.Duration(h.OldestPendingS) * time.Second).String()
		}
		name := terminalSafe(h.Handler)
		if h.Orphaned {
			name += " (orphaned: no handler serves it)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", name, kind, h.Total, h.Delivered, h.Pending,
			h.Dead, h.Damaged, h.Failed, h.Duplicate, h.Ignored, h.Refused, h.Deferred, rate, oldest)
	}
	_ = tw.Flush()
	for _, h := range hs {
		if h.Health != nil {
			fmt.Fprintf(w, "%s: %s\n", terminalSafe(h.Handler), terminalSafe(h.Health.describe(time.Local)))
		}
	}
}

// timeLayout is how the CLI writes a time: with its zone, so that a
// time read on another machine (or in a log) means the same moment.
const timeLayout = "2006-01-02 15:04:05 MST"

func printEvents(w io.Writer, es []eventView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tEVENT\tSTATUS\tATTEMPTS\tAPP")
	for _, e := range es {
		attempts, app := fmt.Sprint(e.Attempts), "-"
		switch {
		case !e.AppCalled:
			attempts, app = "-", "not called"
		case e.LastStatus != 0:
			app = fmt.Sprint(e.LastStatus)
		case e.LastError != "":
			app = "error"
		}
		status := e.Status
		if e.Test {
			status += " (test)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", terminalSafe(e.ID), e.ReceivedAt.Local().Format(timeLayout),
			terminalSafe(truncate(e.Event, 40)), status, attempts, app)
	}
	_ = tw.Flush()
}

// terminalSafe writes s with its control characters (escape sequences
// that would move the cursor, recolour or retitle the operator's
// terminal) and bidirectional overrides (which reorder what is shown)
// spelled out: text a sender wrote reaches the terminal as text.
func terminalSafe(s string) string {
	if !strings.ContainsFunc(s, unsafeForTerminal) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case unsafeForTerminal(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeForTerminal(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func unsafeForTerminal(r rune) bool {
	return unicode.IsControl(r) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f
}
