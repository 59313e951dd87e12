"""Follows the links of an index page; one item per page."""

import scrapy


class PagesSpider(scrapy.Spider):
    name = "pages"

    def __init__(self, start_url="http://127.0.0.1:8000/", **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [start_url]

    def parse(self, response):
        yield from response.follow_all(css="a.page", callback=self.parse_page)

    def parse_page(self, response):
        yield {
            "url": response.url,
            "title": response.css("h1::text").get(),
            "text": " ".join(response.css("p::text").getall()),
        }
