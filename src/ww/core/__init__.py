"""What every layer shares: keys and identities, value types, errors, framing."""
