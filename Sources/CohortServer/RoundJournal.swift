public import CohortCore
public import CohortStore
public import Foundation

/// Where the Coordinator writes each closed round: the results store, or in tests a store that
/// fails on purpose. A write is one transaction: the round, its checkpoint and its devices land
/// together or not at all.
public protocol RoundJournal: Sendable {
  func commitRound(
    _ run: RunID, _ record: RoundRecord, checkpoint: Weights?, devices: [DeviceParticipation],
    lateReports: [Int: Int], resumeState: Data?, secureAggregation: [SecureAggregationStepRecord]
  ) throws(CohortError)
}

extension ResultsStore: RoundJournal {}
