"""Two LLM pipelines: a label for each page (post), and a summary (stream)."""

from nous_twisted.scrapy import LLMPipeline

MODEL = "gpt-4o-mini"


class LabelPipeline(LLMPipeline):
    """One chat completion per page: item["label"]."""

    def build_request(self, item):
        if not item.get("text"):
            return None  # nothing to label: the item goes on unchanged
        prompt = f"One word for the topic of this page:\n\n{item['text'][:2000]}"
        return "/chat/completions", {
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": prompt}],
        }

    def handle_reply(self, item, reply):
        item["label"] = reply.value["choices"][0]["message"]["content"].strip()
        item["request_id"] = reply.request_id
        return item


class SummaryPipeline(LLMPipeline):
    """A streamed summary per page: item["summary"], joined from the deltas."""

    stream = True

    def build_request(self, item):
        return "/chat/completions", {
            "model": MODEL,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Summarise:\n\n{item['text'][:4000]}"}],
        }

    def handle_reply(self, item, events):
        item["summary"] = "".join(
            choice["delta"].get("content", "")
            for event in events
            for choice in event.get("choices", ())
        )
        return item
