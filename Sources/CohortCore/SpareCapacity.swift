extension Dictionary {
  /// Removes `key`, and gives back the table's storage once the dictionary has shrunk to a
  /// quarter of it. A dictionary keeps the capacity of its largest size, so a server's tables of
  /// open streams and connections would otherwise hold a load's peak for the server's life.
  /// Rebuilding at a quarter keeps removal amortised O(1).
  @discardableResult
  public mutating func removeValueReleasingSpace(forKey key: Key) -> Value? {
    let removed = removeValue(forKey: key)
    if capacity > 64, count <= capacity / 4 {
      var smaller = Dictionary(minimumCapacity: count)
      for (key, value) in self { smaller[key] = value }
      self = smaller
    }
    return removed
  }
}
