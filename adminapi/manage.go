package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// serveManage serves GET /smtp/queue and the routes under it.
func serveManage(ctx context.Context, w http.ResponseWriter, r *http.Request, q *queue.Queue, rest string) error {
	if rest == "" && r.Method == http.MethodGet {
		msgs, next, err := q.Store().List(ctx, &queue.Filter{}, 100, r.URL.Query().Get("cursor"))
		if err != nil {
			return apiError(http.StatusServiceUnavailable, err)
		}
		if msgs == nil {
			msgs = []*queue.Message{}
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(map[string]any{"messages": msgs, "next": next})
	}
	return apiError(http.StatusNotFound, errors.New("no such route"))
}
