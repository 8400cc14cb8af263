package webhookguard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
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
	addr, err := caddycmd.DetermineAdminAPIAddress(o.address, nil, o.config, o.adapter)
	if err != nil {
		return err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, "/webhook_guard"+uri, nil, nil)
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
			return fmt.Errorf("%s: %s", e.Error, e.Message)
		}
		return fmt.Errorf("admin API answered %d: %s", resp.StatusCode, b)
	}
	return json.Unmarshal(b, out)
}

func newInboxCommand() *cobra.Command {
	var o historyOptions
	var handler, status string
	var limit int
	cmd := &cobra.Command{
		Use:   "inbox [--handler H] [--status S]",
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
	cmd.Flags().StringVar(&handler, "handler", "", "only this handler's events (default: every handler's)")
	cmd.Flags().StringVar(&status, "status", "", "only events in this state: pending, delivered or dead (in memory: delivered, failed, …)")
	cmd.Flags().IntVar(&limit, "limit", 20, "events per handler")
	return cmd
}

func newReplayCommand() *cobra.Command {
	var o historyOptions
	var handler string
	var dead bool
	cmd := &cobra.Command{
		Use:   "replay <event id> | --dead --handler H",
		Short: "Delivers a delivered or dead event again, or every dead event of a handler",
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			switch {
			case dead && len(args) == 0:
				if handler == "" {
					return errors.New("--dead needs --handler: the handler whose dead events to replay")
				}
				var r struct{ Replayed int }
				if err := o.call(http.MethodPost, "/inbox/replay?"+url.Values{"handler": {handler}, "status": {"dead"}}.Encode(), &r); err != nil {
					return err
				}
				fmt.Fprintf(w, "%d dead events of %s queued again\n", r.Replayed, handler)
			case !dead && len(args) == 1:
				var r struct{ Event eventView }
				if err := o.call(http.MethodPost, "/inbox/events/"+url.PathEscape(args[0])+"/replay", &r); err != nil {
					return err
				}
				fmt.Fprintf(w, "%s queued again (attempt %d next)\n", r.Event.ID, r.Event.Attempts+1)
			default:
				return errors.New("give one event id, or --dead with --handler")
			}
			return nil
		},
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&handler, "handler", "", "with --dead: the handler")
	cmd.Flags().BoolVar(&dead, "dead", false, "replay every dead event of --handler")
	return cmd
}

func printSummaries(w io.Writer, hs []handlerSummary) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLER\tKIND\tTOTAL\tDELIVERED\tPENDING\tDEAD\tFAILED\tSUCCESS\tOLDEST PENDING")
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
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", h.Handler, kind, h.Total, h.Delivered, h.Pending, h.Dead, h.Failed, rate, oldest)
	}
	_ = tw.Flush()
}

func printEvents(w io.Writer, es []eventView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRECEIVED\tEVENT\tSTATUS\tATTEMPTS\tAPP")
	for _, e := range es {
		app := "-"
		if e.LastStatus != 0 {
			app = fmt.Sprint(e.LastStatus)
		} else if e.LastError != "" {
			app = "error"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.ID, e.ReceivedAt.Local().Format(time.DateTime), truncate(e.Event, 40), e.Status, e.Attempts, app)
	}
	_ = tw.Flush()
}
