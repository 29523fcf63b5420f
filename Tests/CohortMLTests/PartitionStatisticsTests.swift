import CohortCore
import CohortML
import Foundation
import Testing

@Suite struct PartitionStatisticsTests {
  @Test func handComputedStatistics() {
    // Client 0: labels 0,0 → 0 bits. Client 1: 1,1,2 → H(2/3, 1/3) = 0.9183 bits.
    // Client 2: 2,0,1 → log2 3 = 1.5850 bits. Client 3: empty, left out of the label means.
    let labels: [Int32] = [0, 0, 1, 1, 2, 2, 0, 1]
    let partition = Partition(clients: [[0, 1], [2, 3, 4], [5, 6, 7], []])
    let s = PartitionStatistics(partition: partition, labels: labels, classes: 3)
    #expect(s.clients == 4 && s.examples == 8 && s.classes == 3)
    #expect(s.minimumSize == 0 && s.medianSize == 2 && s.maximumSize == 3)
    #expect(s.meanSize == 2)
    let h1 = -(2.0 / 3 * log2(2.0 / 3) + 1.0 / 3 * log2(1.0 / 3))
    #expect(abs(s.meanLabelEntropy - (0 + h1 + log2(3)) / 3) < 1e-12)
    #expect(abs(s.meanLabelEntropy - 0.834_42) < 1e-4)
    #expect(s.labelClients == 3)
    #expect(abs(s.meanClassesPerClient - 2) < 1e-12)
    // Sizes 0…3 in bins of width 1.
    #expect(s.sizeHistogram.map(\.range) == [0...0, 1...1, 2...2, 3...3])
    #expect(s.sizeHistogram.map(\.clients) == [1, 0, 1, 2])
  }

  @Test func oddMedianAndBalancedClients() {
    let labels: [Int32] = [0, 1, 0, 1, 0, 1, 0]
    let s = PartitionStatistics(
      partition: Partition(clients: [[0, 1], [2, 3, 4, 5], [6]]), labels: labels, classes: 2)
    #expect(s.medianSize == 2 && s.minimumSize == 1 && s.maximumSize == 4)
    // Client 0: 1 bit; client 1: 1 bit; client 2: 0 bits.
    #expect(abs(s.meanLabelEntropy - 2.0 / 3) < 1e-12)
  }

  @Test func histogramIsLogSpacedOverManyDecades() {
    let sizes = [1, 2, 5, 10, 40, 100, 900, 5000, 20_000]
    let s = PartitionStatistics(sizes: sizes, labelCounts: sizes.map { [$0] }, classes: 1)
    let bins = s.sizeHistogram
    #expect(bins.count >= 5 && bins.count <= 10)
    #expect(bins.first?.range.lowerBound == 1 && bins.last?.range.upperBound == 20_000)
    #expect(bins.reduce(0) { $0 + $1.clients } == sizes.count)
    for i in 1..<bins.count { #expect(bins[i].range.lowerBound == bins[i - 1].range.upperBound + 1) }
    // Log spacing: each bin is wider than the one before.
    #expect(bins.last!.range.count > 100 * bins.first!.range.count)
  }

  @Test func linearHistogramCoversTheRange() {
    let sizes = Array(50...149)
    let s = PartitionStatistics(sizes: sizes, labelCounts: [], classes: 10)
    #expect(s.sizeHistogram.count == 10)
    #expect(s.sizeHistogram.allSatisfy { $0.range.count == 10 && $0.clients == 10 })
    #expect(s.labelClients == 0 && s.meanLabelEntropy == 0)
  }

  @Test func sampledLabelCountsAreReported() {
    let s = PartitionStatistics(sizes: [10, 10, 10, 10], labelCounts: [[5, 5]], classes: 2)
    #expect(s.labelClients == 1 && s.meanLabelEntropy == 1)
    #expect(s.rendered().contains("over 1 of 4 clients"))
  }

  @Test func renderedReportHasBars() {
    let labels: [Int32] = [0, 0, 1, 1, 2, 2, 0, 1]
    let s = PartitionStatistics(
      partition: Partition(clients: [[0, 1], [2, 3, 4], [5, 6, 7]]), labels: labels, classes: 3)
    let text = s.rendered()
    #expect(text.contains("clients         3"))
    #expect(text.contains("min 2 · median 3 · mean 2.7 · max 3"))
    #expect(text.contains("█"))
    #expect(text.contains("0.83 bits"))
  }

  @Test func emptyPartition() {
    let s = PartitionStatistics(sizes: [], labelCounts: [], classes: 2)
    #expect(s.clients == 0 && s.sizeHistogram.isEmpty)
    #expect(!s.rendered().isEmpty)
  }
}
