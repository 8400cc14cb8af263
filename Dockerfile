# webhookguard: Caddy v2.11.9 with webhook_guard, built from this checkout.
#
#   docker build -t webhookguard .
#   docker run -p 8080:8080 -v webhookguard-data:/data \
#     -v $PWD/deploy/Caddyfile:/etc/caddy/Caddyfile:ro webhookguard
#
# The build runs scripts/build-caddy.sh, which CI runs too. The inbox
# file lives in Caddy's data directory, /data/caddy/webhookguard/inbox.db:
# keep /data on a volume, or acknowledged events die with the container.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN bash scripts/build-caddy.sh /out/caddy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
	&& rm -rf /var/lib/apt/lists/* \
	&& useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin caddy \
	&& mkdir -p /data /config /etc/caddy && chown caddy:caddy /data /config
COPY --from=build /out/caddy /usr/bin/caddy
COPY deploy/Caddyfile /etc/caddy/Caddyfile
ENV XDG_DATA_HOME=/data XDG_CONFIG_HOME=/config
VOLUME /data
USER caddy
EXPOSE 8080
ENTRYPOINT ["/usr/bin/caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
