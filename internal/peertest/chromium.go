package peertest

import (
	"context"
	"fmt"
	"time"

	"github.com/chromedp/chromedp"
)

// PollJS is a chromedp action that waits, at most timeout, until the
// JavaScript expression expr is true in the page, checking every 50 ms.
func PollJS(expr string, timeout time.Duration) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		deadline := time.Now().Add(timeout)
		for {
			ok, err := chromedp.Evaluate[bool](expr)(ctx, tg)
			if err == nil && ok {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("waited %s for %s (last error: %v)", timeout, expr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}
