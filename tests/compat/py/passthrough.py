"""Scenario 10 (Python): data passthrough. Herald must forward ``data`` byte-for-byte (spec §3,
§20.3), so values whose JSON spelling Python can observe survive: ``1500.0`` stays a float,
``1e3`` stays a float, a 20-digit integer stays an exact int, ``0.1 + 0.2`` keeps all its
digits, and non-ASCII text escaped as ``\\uXXXX`` decodes the same."""

from helpers import Direct, Message, connect, make_client, mint_token, run

CH = "data/passthrough"


def check(data: object, where: str) -> None:
    assert isinstance(data, dict), f"{where}: {data!r}"
    assert isinstance(data["price"], float) and data["price"] == 1500.0, f"{where}: price {data['price']!r}"
    assert isinstance(data["big"], int) and data["big"] == 12345678901234567890, f"{where}: big {data['big']!r}"
    assert data["sum"] == 0.30000000000000004, f"{where}: sum {data['sum']!r}"
    assert isinstance(data["zero"], float) and data["zero"] == 0.0, f"{where}: zero {data['zero']!r}"
    assert data["text"] == "héllo ✓ 𝄞", f"{where}: text {data['text']!r}"
    assert data["nested"] == {"n": [1.0, 2, -3.5e-7], "null": None, "t": True}, f"{where}: nested {data['nested']!r}"
    assert isinstance(data["nested"]["n"][0], float), f"{where}: 1.0 became {data['nested']['n'][0]!r}"
    assert list(data.keys()) == ["price", "big", "sum", "zero", "text", "nested"], f"{where}: key order {list(data)}"


async def main() -> None:
    pub, rp = make_client("pub", token=mint_token("pub"))
    sub, rs = make_client("sub", token=mint_token("sub"))
    await connect(pub, rp)
    await connect(sub, rs)
    await sub.subscribe(CH)

    payload = {
        "price": 1500.0,
        "big": 12345678901234567890,
        "sum": 0.1 + 0.2,
        "zero": 0.0,
        "text": "héllo ✓ 𝄞",  # json.dumps escapes these as \\uXXXX (ensure_ascii)
        "nested": {"n": [1.0, 2, -3.5e-7], "null": None, "t": True},
    }
    await pub.publish(CH, payload)
    m = await rs.wait_for(Message, label="message with numeric payload")
    check(m.data, "publish")
    assert m.data["price"] == 1500.0 and str(m.data["price"]) == "1500.0"

    await pub.send("sub", payload)
    d = await rs.wait_for(Direct, label="direct with numeric payload")
    check(d.data, "send")

    # Scalars as the whole payload.
    await pub.publish(CH, 1500.0)
    m = await rs.wait_for(Message, lambda m: not isinstance(m.data, dict), "scalar payload")
    assert isinstance(m.data, float) and m.data == 1500.0, repr(m.data)

    await pub.close()
    await sub.close()


run("py passthrough", main)
