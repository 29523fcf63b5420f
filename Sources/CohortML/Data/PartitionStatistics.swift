import Foundation

/// What `cohort data describe` shows about a partition: how big the clients are and how skewed
/// their labels are.
public struct PartitionStatistics: Sendable {
  public var clients: Int
  public var examples: Int
  public var classes: Int
  public var minimumSize: Int
  /// The lower median: the ⌈n/2⌉-th smallest size.
  public var medianSize: Int
  public var maximumSize: Int
  public var meanSize: Double
  /// Clients with no examples.
  public var emptyClients: Int
  /// The mean, over non-empty clients whose labels were counted, of the Shannon entropy in bits
  /// of the client's label distribution: 0 when each client has one label, log2(classes) when
  /// every client is balanced.
  public var meanLabelEntropy: Double
  /// The mean number of distinct labels per non-empty counted client.
  public var meanClassesPerClient: Double
  /// How many clients the label statistics cover: all non-empty ones, or those of a sample.
  public var labelClients: Int
  /// Clients by size in about ten bins covering minimum…maximum; log-spaced when the sizes span
  /// more than two decades.
  public var sizeHistogram: [(range: ClosedRange<Int>, clients: Int)]

  /// Statistics of `partition` over a dataset with these labels.
  public init(partition: Partition, labels: [Int32], classes: Int) {
    let counts = partition.clients.map { indices -> [Int] in
      var counts = [Int](repeating: 0, count: classes)
      for i in indices {
        let y = Int(labels[i])
        precondition(y >= 0 && y < classes, "label \(y) of example \(i) is outside 0..<\(classes)")
        counts[y] += 1
      }
      return counts
    }
    self.init(sizes: partition.clients.map(\.count), labelCounts: counts, classes: classes)
  }

  /// Statistics from per-client sizes and label counts, for populations too large to hold as a
  /// `Partition` (a synthetic population of a million devices).
  ///
  /// - Parameters:
  ///   - sizes: every client's size.
  ///   - labelCounts: examples per class for every client, or for a sample of clients when
  ///     counting all is too slow; the label statistics are then over that sample
  ///     (`labelClients` says how many).
  public init(sizes: [Int], labelCounts: [[Int]], classes: Int) {
    let sorted = sizes.sorted()
    clients = sizes.count
    examples = sizes.reduce(0, +)
    self.classes = classes
    minimumSize = sorted.first ?? 0
    maximumSize = sorted.last ?? 0
    medianSize = sorted.isEmpty ? 0 : sorted[(sorted.count - 1) / 2]
    meanSize = sizes.isEmpty ? 0 : Double(examples) / Double(sizes.count)
    emptyClients = sizes.filter { $0 == 0 }.count

    var entropySum = 0.0
    var classSum = 0
    var counted = 0
    for counts in labelCounts {
      let total = counts.reduce(0, +)
      guard total > 0 else { continue }
      counted += 1
      for n in counts where n > 0 {
        let p = Double(n) / Double(total)
        entropySum -= p * log2(p)
        classSum += 1
      }
    }
    labelClients = counted
    meanLabelEntropy = counted == 0 ? 0 : entropySum / Double(counted)
    meanClassesPerClient = counted == 0 ? 0 : Double(classSum) / Double(counted)
    sizeHistogram = Self.histogram(sorted)
  }

  /// Bins for sorted sizes: lower bounds strictly increasing from the minimum, the last bin
  /// ending at the maximum. An empty-client bin 0…0 comes first under log spacing.
  static func histogram(_ sorted: [Int]) -> [(range: ClosedRange<Int>, clients: Int)] {
    guard let low = sorted.first, let high = sorted.last else { return [] }
    let binCount = 10
    var starts: [Int] = []
    let positiveLow = Swift.max(low, 1)
    if high > 100 * positiveLow {
      if low == 0 { starts.append(0) }
      let ratio = Double(high) / Double(positiveLow)
      for i in 0..<binCount {
        let start = Int((Double(positiveLow) * pow(ratio, Double(i) / Double(binCount))).rounded())
        if starts.last.map({ start > $0 }) ?? true { starts.append(start) }
      }
    } else {
      let width = Swift.max(1, (high - low + binCount) / binCount)
      var start = low
      while start <= high {
        starts.append(start)
        start += width
      }
    }
    var bins: [(range: ClosedRange<Int>, clients: Int)] = []
    var k = 0
    for (b, start) in starts.enumerated() {
      let end = b + 1 < starts.count ? starts[b + 1] - 1 : high
      var n = 0
      while k < sorted.count && sorted[k] <= end {
        n += 1
        k += 1
      }
      bins.append((start...end, n))
    }
    return bins
  }

  /// A short report for the terminal, with a bar per histogram bin.
  public func rendered() -> String {
    var lines: [String] = []
    func row(_ name: String, _ value: String) {
      lines.append(name.padding(toLength: 16, withPad: " ", startingAt: 0) + value)
    }
    row("clients", "\(clients)")
    row("examples", "\(examples)")
    row("classes", "\(classes)")
    row(
      "client size",
      "min \(minimumSize) · median \(medianSize) · mean \(String(format: "%.1f", meanSize)) · "
        + "max \(maximumSize)")
    if emptyClients > 0 { row("empty clients", "\(emptyClients)") }
    let nonEmpty = clients - emptyClients
    if labelClients == 0 {
      row("label entropy", "not counted")
    } else {
      let sample = labelClients < nonEmpty ? " (over \(labelClients) of \(nonEmpty) clients)" : ""
      let ceiling = classes > 1 ? String(format: " of at most %.2f", log2(Double(classes))) : ""
      row("label entropy", String(format: "%.2f bits per client", meanLabelEntropy) + ceiling + sample)
      row("labels/client", String(format: "%.1f distinct on average", meanClassesPerClient))
    }
    guard !sizeHistogram.isEmpty else { return lines.joined(separator: "\n") + "\n" }
    lines.append("clients by size:")
    let labels = sizeHistogram.map {
      $0.range.count == 1 ? "\($0.range.lowerBound)" : "\($0.range.lowerBound)–\($0.range.upperBound)"
    }
    let labelWidth = labels.map(\.count).max() ?? 0
    let most = sizeHistogram.map(\.clients).max() ?? 0
    let barWidth = 40
    for (label, bin) in zip(labels, sizeHistogram) {
      // Any non-empty bin shows at least one block, so it cannot be mistaken for an empty one.
      let length = most == 0 ? 0 : Swift.max(bin.clients > 0 ? 1 : 0, bin.clients * barWidth / most)
      let padded = String(repeating: " ", count: labelWidth - label.count) + label
      lines.append("  \(padded) │\(String(repeating: "█", count: length)) \(bin.clients)")
    }
    return lines.joined(separator: "\n") + "\n"
  }
}
