"""
The collecting side, in the order the data flows: L{protocol} reads each connection's frames
(L{ServerProtocol}), pausing as L{flow} says and matching sightings to payloads in
L{sightings}, and L{factory} bounds the connections together (L{ServerFactory}); L{ingest} commits
what arrives together in one transaction and acknowledges each payload once it is stored
(L{Ingest}); L{collector} waits for the stores, listens, and stops in order
(L{CollectorService}).

Every module logs in the namespace C{ethtwisted.server}, as the single module did.
"""
