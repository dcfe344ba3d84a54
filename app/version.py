"""Sentinel's version: the OpenAPI document and the sentinel_info metric name it."""

VERSION = "0.1.0"
