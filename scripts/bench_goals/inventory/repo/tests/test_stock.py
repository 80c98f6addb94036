from inventory.stock import Inventory


def test_add_and_remove():
    stock = Inventory()
    stock.add("apple", 3)
    stock.remove("apple", 1)
    assert stock.count("apple") == 2
