"""Settings of the example project: pages in, items enriched by an LLM out."""

import os

BOT_NAME = "llm_enrich"
SPIDER_MODULES = ["llm_enrich.spiders"]
ROBOTSTXT_OBEY = False

# nous_twisted: the add-on registers the extension (settings, stats, logs, close).
ADDONS = {"nous_twisted.scrapy.NousAddon": 300}
ITEM_PIPELINES = {
    "llm_enrich.pipelines.LabelPipeline": 300,      # one post per item
    "llm_enrich.pipelines.SummaryPipeline": 400,    # one stream per item
}

NOUS_BASE_URL = "https://api.openai.com/v1"
NOUS_HEADERS = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}
NOUS_MAX_CONNECTIONS = 8     # per host: calls over it wait for a connection, in order
NOUS_TIMEOUT = 60.0          # post: the whole reply; stream: the longest gap between events
NOUS_RETRY_TIMES = 3         # 408, 409, 429, 500, 502, 503, 504, 529; Retry-After honoured
NOUS_CLOSE_TIMEOUT = 30.0    # at close, abort calls still running after this
NOUS_ON_ERROR = "keep"       # a failed call leaves its error in item["nous_error"]

# Backpressure: bound the pages whose items are in the pipelines at once.
CONCURRENT_ITEMS = 16
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 64 * 1024
