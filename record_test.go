package webhookguard

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestDescribeAttemptError guards what the history and the health line
// say of an attempt's error: a timeout names the inbox's timeout when
// there is one, and says no "0s" for a direct forward, whose deadline is
// reverse_proxy's.
func TestDescribeAttemptError(t *testing.T) {
	for _, tc := range []struct {
		timeout time.Duration
		want    string
	}{{30 * time.Second, "timed out after 30s"}, {0, "timed out"}} {
		t.Run(tc.want, func(t *testing.T) {
			if got := describeAttemptError(fmt.Errorf("forward: %w", context.DeadlineExceeded), tc.timeout).Error(); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
