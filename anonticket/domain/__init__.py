"""Pure values and rules: ids, tokens, amounts, the address codec, URIs, webhook messages."""
