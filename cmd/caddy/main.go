// Command caddy is a Caddy build with the standard modules plus
// webhookguard: go build ./cmd/caddy, or go run ./cmd/caddy run.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/webhookguard/webhookguard"
	_ "time/tzdata"
)

func main() { caddycmd.Main() }
