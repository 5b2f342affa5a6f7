"""Pixel helpers with no state: PNG/WebP codecs and arrays, and turning generated pixels into the result patch."""
