"""The qsh sans-IO protocol core and its asyncio adapter."""
