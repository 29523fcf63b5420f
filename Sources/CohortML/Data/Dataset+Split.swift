public import CohortCore

extension Dataset {
  /// A shuffled train/test split: `test` gets `count − ⌊count · (1 − testFraction)⌋` examples
  /// (the FedProx reference's `int(0.9 · n)` training cut), both in shuffled order. The same
  /// stream state gives the same split. Client ownership is kept on both sides.
  public func split(testFraction: Double, rng: inout RandomStream) throws(CohortError) -> (
    train: Dataset, test: Dataset
  ) {
    guard testFraction >= 0 && testFraction <= 1 else {
      throw CohortError(
        .invalidConfiguration, "testFraction is \(testFraction); expected a fraction in 0…1")
    }
    let order = rng.permutation(count)
    let trainCount = Self.trainCount(count, testFraction: testFraction)
    return (subset(Array(order[0..<trainCount])), subset(Array(order[trainCount...])))
  }

  /// The training share of `count` examples, as the FedProx reference cuts it: `int(0.9 · n)`.
  static func trainCount(_ count: Int, testFraction: Double) -> Int {
    Swift.min(count, Swift.max(0, Int(Double(count) * (1 - testFraction))))
  }

  /// The examples of several datasets one after another.
  ///
  /// All must share a feature shape; `classes` is the largest of theirs. Client ownership is
  /// kept when every part has it: clients with the same name become one.
  public static func concatenating(_ parts: [Dataset]) throws(CohortError) -> Dataset {
    guard let first = parts.first else {
      throw CohortError(.invalidConfiguration, "no datasets to concatenate; expected at least one")
    }
    for (i, part) in parts.enumerated() where part.featureShape != first.featureShape {
      throw CohortError(
        .shapeMismatch,
        "dataset \(i) has examples of shape \(part.featureShape) but dataset 0 has \(first.featureShape)")
    }
    var features: [Float] = []
    var labels: [Int32] = []
    features.reserveCapacity(parts.reduce(0) { $0 + $1.features.count })
    labels.reserveCapacity(parts.reduce(0) { $0 + $1.count })
    for part in parts {
      features.append(contentsOf: part.features)
      labels.append(contentsOf: part.labels)
    }
    var owners: [Int32]? = nil
    var names: [String]? = nil
    if parts.allSatisfy({ $0.clients != nil }) {
      var all: [Int32] = []
      var allNames: [String] = []
      var index: [String: Int32] = [:]
      all.reserveCapacity(labels.count)
      for (p, part) in parts.enumerated() {
        guard let clients = part.clients else { continue }
        // Unnamed clients are named by part and index so that they stay distinct.
        let partNames =
          part.clientNames
          ?? (0..<(Int(clients.max() ?? -1) + 1)).map { "\(p):\($0)" }
        let remap = partNames.map { name -> Int32 in
          if let known = index[name] { return known }
          let new = Int32(allNames.count)
          index[name] = new
          allNames.append(name)
          return new
        }
        for c in clients {
          guard c >= 0 && Int(c) < remap.count else {
            throw CohortError(
              .invalidData,
              "dataset \(p) has an example owned by client \(c) but only \(remap.count) client names")
          }
          all.append(remap[Int(c)])
        }
      }
      owners = all
      names = allNames
    }
    return Dataset(
      features: features, labels: labels, featureShape: first.featureShape,
      classes: parts.map(\.classes).max() ?? first.classes, clients: owners, clientNames: names)
  }
}

extension Partition {
  /// Checks that every example index in `0..<exampleCount` belongs to exactly one client.
  public func validate(exampleCount: Int) throws(CohortError) {
    var owner = [Int32](repeating: -1, count: exampleCount)
    for (c, indices) in clients.enumerated() {
      for i in indices {
        guard i >= 0 && i < exampleCount else {
          throw CohortError(
            .invalidData,
            "client \(c) holds example \(i); expected indices in 0..<\(exampleCount)")
        }
        guard owner[i] < 0 else {
          throw CohortError(
            .invalidData, "example \(i) belongs to both client \(owner[i]) and client \(c); expected one")
        }
        owner[i] = Int32(c)
      }
    }
    if let missing = owner.firstIndex(of: -1) {
      throw CohortError(
        .invalidData,
        "example \(missing) belongs to no client (\(owner.filter { $0 < 0 }.count) unassigned); "
          + "expected every example in exactly one client")
    }
  }

  /// The number of examples each client holds.
  public var sizes: [Int] { clients.map(\.count) }
}
