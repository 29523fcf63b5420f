public import CohortCore
