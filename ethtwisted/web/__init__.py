"""
The stats API, metrics and dashboard over HTTP (twisted.web), read-only over the stores.

- C{/_cat}, C{/_cat/hashes}, C{/_cat/hashes/<sha256>}, C{/_cat/clients}: the older stats
  service's plain-text tables, from Redis when it is configured, else from SQL (L{cat}).
- C{/api/v1/...}: JSON (blocks, one block, clients, heads, arrivals) from SQL (L{api}).
- C{/metrics}: Prometheus text format, from a L{CollectorRegistry} of the service's own, and
  C{/healthz}: 200 when every store answers, 503 with the reasons otherwise (L{health}).
- C{/}: the dashboard, one self-contained page that polls the JSON API (L{dashboard}).

With a token, the JSON API, C{/metrics} and the dashboard require C{Authorization: Bearer
<token>} (the dashboard also takes C{?token=} once); C{/_cat} and C{/healthz} stay open.
C{docs/stats.md} describes every endpoint.

L{resource} holds what every endpoint shares (errors, responses, the token, the headers,
bounded query arguments); L{reads} is what the endpoints read the stores through; L{site}
puts the endpoints together and serves them.
"""
