package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestGetWantsTwoHundreds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("ok\n"))
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		default:
			http.Error(w, "redis not reachable", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	client := newClient()
	f := func(path, want string) {
		t.Helper()
		err := get(client, srv.URL+path)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("get %s = %v, want error containing %q", path, err, want)
		}
	}
	f("/healthz", "")
	f("/readyz", "answered 503: redis not reachable")
	f("/moved", "answered 302") // a redirect is not followed: not healthy
	srv.Close()
	f("/healthz", "cannot probe")
}
