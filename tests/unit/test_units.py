

def test_rates_are_bits_as_tc_writes_them_or_bytes_with_a_capital_b():
    from agentd.units import parse_rate
    assert parse_rate("20Mbit") == 2_500_000
    assert parse_rate("20mbps") == 2_500_000
    assert parse_rate("1.5Gbit") == 187_500_000
    assert parse_rate("100kbit") == 12_500
    assert parse_rate("10MB/s") == 10_000_000
    assert parse_rate("10Mb/s") == 1_250_000
    assert parse_rate(4096) == 4096
    assert parse_rate("max") is None and parse_rate(None) is None


def test_a_bad_rate_says_how_to_write_one():
    import pytest
    from agentd.errors import AgentdError
    from agentd.units import parse_rate
    for bad in ("20", "fast", "-3Mbit", True):
        with pytest.raises(AgentdError, match="rate"):
            parse_rate(bad)
    with pytest.raises(AgentdError, match="below 1 byte/s"):
        parse_rate("0Mbit")
    with pytest.raises(AgentdError, match="above 0"):
        parse_rate(0)
