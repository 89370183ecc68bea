# The example of ducto.manager's API reference, as written there. It expects two names
# from whoever runs it: supabase_url and service_role_key (tests/integration/test_pricing.py runs it
# against the local stack, on both stores, and checks it still matches the reference).
from ducto import CreditManager, UsageMetrics
from ducto.interface.supabase import HttpxSupabaseStore

store = HttpxSupabaseStore(url=supabase_url, key=service_role_key)
manager = CreditManager(store=store)

# One-time setup (creates tables + RPCs)
manager.setup()

# Load pricing from store (credit_pricing_config table)
manager.load_pricing_from_store()

# Deduct credits for a usage event
result = manager.deduct(
    user_id="user_abc",
    metrics=UsageMetrics(model="claude-opus-4", input_tokens=500, output_tokens=200),
    idempotency_key="chat_42_turn_7",
)
print(f"Deducted {result.amount} credits, balance: {result.balance_after}")
