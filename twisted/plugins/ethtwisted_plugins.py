from twisted.application.service import ServiceMaker

eth_server = ServiceMaker(
    "ethtwisted server",
    "ethtwisted.server_tap",
    "Collect blocks from eth-clients into SQL and Redis.",
    "eth-server",
)
eth_client = ServiceMaker(
    "ethtwisted client",
    "ethtwisted.client_tap",
    "Follow an Ethereum node and send every block to an eth-server.",
    "eth-client",
)
eth_stats = ServiceMaker(
    "ethtwisted stats",
    "ethtwisted.stats_tap",
    "Serve the stats API and dashboard over the stores of eth-servers, read-only.",
    "eth-stats",
)
eth_demo = ServiceMaker(
    "ethtwisted demo",
    "ethtwisted.demo_tap",
    "Run a dev node, eth-server with its dashboard, and eth-client together, in one process.",
    "eth-demo",
)
