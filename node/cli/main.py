def main() -> int:
    print("ofnode: not built yet")
    return 0
