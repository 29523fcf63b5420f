/// Labelled examples held in memory as flat arrays: the shape every loader produces and every
/// partitioner, trainer and evaluator consumes.
public struct Dataset: Sendable {
  /// `count × featureCount` values, one example after another.
  public var features: [Float]
  /// Class index of each example, in `0..<classes`.
  public var labels: [Int32]
  /// The shape of one example: `[d]` for vectors, `[channels, height, width]` for images.
  public var featureShape: [Int]
  public var classes: Int
  /// For data that comes divided by its producer (a CSV client column, a LEAF user, a
  /// synthetic device): the owner of each example, an index into `clientNames`.
  public var clients: [Int32]?
  public var clientNames: [String]?

  public init(
    features: [Float], labels: [Int32], featureShape: [Int], classes: Int,
    clients: [Int32]? = nil, clientNames: [String]? = nil
  ) {
    let d = featureShape.reduce(1, *)
    precondition(features.count == labels.count * d, "features do not match labels × shape")
    self.features = features
    self.labels = labels
    self.featureShape = featureShape
    self.classes = classes
    self.clients = clients
    self.clientNames = clientNames
  }

  public var count: Int { labels.count }
  public var featureCount: Int { featureShape.reduce(1, *) }

  /// The examples at `indices`, in that order (client ownership is kept).
  public func subset(_ indices: [Int]) -> Dataset {
    let d = featureCount
    var f = [Float]()
    f.reserveCapacity(indices.count * d)
    features.withUnsafeBufferPointer { src in
      for i in indices { f.append(contentsOf: src[(i * d)..<((i + 1) * d)]) }
    }
    return Dataset(
      features: f, labels: indices.map { labels[$0] }, featureShape: featureShape,
      classes: classes, clients: clients.map { c in indices.map { c[$0] } },
      clientNames: clientNames)
  }

  /// Examples per class.
  public func labelCounts() -> [Int] {
    var counts = [Int](repeating: 0, count: classes)
    for y in labels { counts[Int(y)] += 1 }
    return counts
  }
}

/// A division of one dataset's examples among clients: each client holds indices into it.
public struct Partition: Sendable, Hashable {
  public var clients: [[Int]]

  public init(clients: [[Int]]) { self.clients = clients }

  public var clientCount: Int { clients.count }
}
